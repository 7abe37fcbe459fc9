"""data2vec 2.0 serving artifacts from the original fairseq checkpoints (issue 29): each fixture
goes from its ``checkpoint.pt`` to ONNX, ``torch.export``, SavedModel and LiteRT in one call
(``d2v-export CKPT DST --format F --from fairseq``, which validates against the eager model at
a second batch size and length), then every artifact runs in one process where d2v cannot be
imported and must give upstream fairseq's outputs (1e-4; LiteRT 1e-3; valid audio frames only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from d2v_common import export as common
from tests.test_data2vec2 import CASES, FIXTURES
from tests.d2v_free import D2V_BLOCKER

FORMATS = ("onnx", "torch-export", "saved-model", "litert")
ARTIFACTS = {"onnx": "model.onnx", "torch-export": "model.pt2", "saved-model": ".", "litert": "model.tflite"}

# Runs every artifact with d2v unimportable (isolated interpreter, imports of d2v refused).
RUNNER = D2V_BLOCKER + textwrap.dedent(
    """

    for job in json.load(open(sys.argv[1])):
        inputs = dict(np.load(job["inputs"]))
        kind, path = job["format"], job["path"]
        if kind == "onnx":
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            out = dict(zip(names, session.run(names, inputs)))
        elif kind == "torch-export":
            import torch
            with torch.no_grad():
                got = torch.export.load(path).module()(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            out = {k: v.numpy() for k, v in got.items()}
        elif kind == "saved-model":
            import tensorflow as tf
            fn = tf.saved_model.load(path).signatures["serving_default"]
            specs = fn.structured_input_signature[1]
            feed = {k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()}
            out = {k: v.numpy() for k, v in fn(**feed).items()}
        else:
            from ai_edge_litert.interpreter import Interpreter
            runner = Interpreter(model_path=path).get_signature_runner("serving_default")
            details = runner.get_input_details()
            out = runner(**{k: v.astype(details[k]["dtype"]) for k, v in inputs.items()})
        np.savez(job["out"], **out)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("d2v_common", "d2v_torch", "d2v_tf"))
    print(json.dumps({"leaked": leaked}))
    """
)


def artifact_inputs(case: str) -> dict[str, np.ndarray]:
    """The fixture's inputs under HF's names (the fixtures hold fairseq's ``source`` and a
    padding mask, True = padded)."""
    inputs = dict(np.load(os.path.join(FIXTURES, case, "inputs.npz")))
    source = inputs["source"]
    if case.startswith("image"):
        return {"pixel_values": source.astype(np.float32)}
    keep = (~inputs["padding_mask"]).astype(np.int64)
    if case.startswith("audio"):
        return {"input_values": source.astype(np.float32), "attention_mask": keep}
    return {"input_ids": source.astype(np.int64), "attention_mask": keep}


def expected_outputs(case: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Upstream's outputs under HF's names, and the valid-frame mask (audio)."""
    out = dict(np.load(os.path.join(FIXTURES, case, "outputs.npz")))
    if case == "image-features":
        return {"last_hidden_state": out["x"]}, None
    if case == "audio-features":
        return {"last_hidden_state": out["x"]}, ~out["padding_mask"]
    if case == "audio-ctc":  # fairseq overwrites padded frames; valid frames are compared
        return {"logits": out["logits_btc"]}, ~out["padding_mask"]
    return {"logits": out["logits"]}, None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every fixture exported to every format with one call each, then all artifacts run in one
    d2v-free subprocess; returns {(case, format): (outputs, validation diffs)}."""
    root = tmp_path_factory.mktemp("d2v2-serving")
    jobs, diffs = [], {}
    for case in CASES:
        np.savez(root / f"{case}-inputs.npz", **artifact_inputs(case))
        dictionary = os.path.join(FIXTURES, case, "dict.txt")
        for fmt in FORMATS:
            dst = root / f"{case}-{fmt}"
            result = common.export_checkpoint(
                os.path.join(FIXTURES, case, "checkpoint.pt"), dst, fmt, from_fairseq=True,
                dictionary=dictionary if os.path.isfile(dictionary) else None,
            )
            assert result.architecture.startswith("Data2Vec2")
            assert os.path.isfile(dst / "config.json")
            diffs[(case, fmt)] = result.diffs
            jobs.append({"format": fmt, "path": str(dst / ARTIFACTS[fmt]), "inputs": str(root / f"{case}-inputs.npz"),
                         "out": str(root / f"{case}-{fmt}-out.npz")})
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(root / "runner.py"), str(root / "jobs.json")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["leaked"] == []
    return {key: (dict(np.load(root / f"{key[0]}-{key[1]}-out.npz")), d) for key, d in diffs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES)
def test_fairseq_fixture_served_without_d2v_gives_upstream_outputs(served, case, fmt):
    got, validation = served[(case, fmt)]
    tolerance = 1e-3 if fmt == "litert" else 1e-4
    # the export validated itself at a second batch size and length (vision: batch only)
    assert validation and max(validation.values()) <= tolerance
    expected, valid = expected_outputs(case)
    assert set(expected) <= set(got), (sorted(got), sorted(expected))  # the fixtures hold the main output
    for key, want in expected.items():
        assert got[key].shape == want.shape, (key, got[key].shape, want.shape)
        have = got[key] if valid is None else got[key][valid]
        want = want if valid is None else want[valid]
        diff = float(np.max(np.abs(have - want)))
        assert diff <= tolerance, f"{case} {fmt} {key}: max abs diff to upstream {diff:.2e} > {tolerance:.0e}"


def test_export_from_fairseq_errors_are_clear_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    code = common.main([str(bad), str(tmp_path / "out"), "--format", "onnx", "--from", "fairseq"])
    assert code == 2
    assert "cannot convert the fairseq checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
    code = common.main([str(bad), str(tmp_path / "out"), "--format", "onnx", "--dict", "dict.txt"])
    assert code == 2 and "--from fairseq" in capsys.readouterr().err


def test_alibi_from_tensor_ops_is_bit_identical_to_the_shared_formula():
    """The traceable ALiBi (built from the length with torch ops, so a symbolic length works)
    keeps eager results bit-identical to d2v_common's numpy formula."""
    from d2v_common import data2vec2 as D
    from d2v_common.data2vec2 import Data2Vec2AudioConfig
    from d2v_torch.data2vec2 import sequence_alibi

    for heads in (4, 3, 12):
        config = Data2Vec2AudioConfig(num_attention_heads=12, num_alibi_heads=heads, hidden_size=48,
                                      num_conv_pos_embedding_groups=4)
        for length in (1, 7, 300):
            want = D.alibi_slopes(config.alibi_heads)[:, None, None] * D.alibi_distances_1d(length)[None]
            got = sequence_alibi(config, length, "cpu").numpy()
            assert got.dtype == want.dtype and np.array_equal(got, want), (heads, length)
