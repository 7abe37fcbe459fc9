"""Serving from PyTorch: ONNX and torch.export artifacts of every class (data2vec 1.0 and 2.0), run in their own
runtimes (onnxruntime; torch.export.load in a process where d2v cannot be imported), the
export CLI's errors and all-or-nothing DST, and torch.compile / jit.trace of the vision
classes with relative position bias (issue 16, point 3).

Each class is exported once (one torch.export program, written as model.pt2 and translated
to model.onnx) and checked at a batch size and length other than the export sample's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import d2v_torch
from crosscheck.cases import audio as audio_cases
from crosscheck.cases import data2vec2 as d2v2_cases
from crosscheck.cases import text as text_cases
from crosscheck.cases import vision as vision_cases
from d2v_common import export as common
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_torch import export as torch_export

TOLERANCE = 1e-4

TEXT = {**text_cases.SMALL, "type_vocab_size": 1, "pad_token_id": 1}
# (architecture, config): every class, with the position / bias variants that take other code paths
CLASSES = [
    ("Data2VecTextModel", Data2VecTextConfig(**TEXT)),
    ("Data2VecTextForCausalLM", Data2VecTextConfig(**TEXT, is_decoder=True)),
    ("Data2VecTextForMaskedLM", Data2VecTextConfig(**TEXT, position_embedding_type="relative_key_query")),
    ("Data2VecTextForSequenceClassification", Data2VecTextConfig(**{**TEXT, "type_vocab_size": 2})),
    ("Data2VecTextForMultipleChoice", Data2VecTextConfig(**TEXT, position_embedding_type="relative_key")),
    ("Data2VecTextForTokenClassification", Data2VecTextConfig(**TEXT)),
    ("Data2VecTextForQuestionAnswering", Data2VecTextConfig(**{**TEXT, "num_labels": 2})),
    ("Data2VecAudioModel", Data2VecAudioConfig(**audio_cases.SMALL, add_adapter=True, output_hidden_size=24)),
    ("Data2VecAudioForCTC", Data2VecAudioConfig(**audio_cases.SMALL)),
    ("Data2VecAudioForSequenceClassification", Data2VecAudioConfig(**audio_cases.SMALL, use_weighted_layer_sum=True)),
    ("Data2VecAudioForAudioFrameClassification", Data2VecAudioConfig(**audio_cases.SMALL)),
    ("Data2VecAudioForXVector", Data2VecAudioConfig(**audio_cases.SMALL)),
    ("Data2VecVisionModel", Data2VecVisionConfig(**vision_cases.SMALL, **vision_cases.VARIANTS["relbias"])),
    ("Data2VecVisionForImageClassification",
     Data2VecVisionConfig(**vision_cases.SMALL, **vision_cases.VARIANTS["shared-cls"])),
    ("Data2VecVisionForSemanticSegmentation",
     Data2VecVisionConfig(**vision_cases.SMALL, **vision_cases.VARIANTS["aux-concat"])),
    # data2vec 2.0: ALiBi (1-D over frames / tokens, 2-D over patches), GroupNorm extractor, extra tokens
    ("Data2Vec2VisionModel", Data2Vec2VisionConfig(**{**d2v2_cases.VISION, **d2v2_cases.VISION_VARIANTS["alibi2d"]})),
    ("Data2Vec2VisionForImageClassification",
     Data2Vec2VisionConfig(**{**d2v2_cases.VISION, **d2v2_cases.VISION_VARIANTS["alibi1d-linsoftmax"]})),
    ("Data2Vec2AudioModel", Data2Vec2AudioConfig(**{**d2v2_cases.AUDIO, **d2v2_cases.AUDIO_VARIANTS["groupnorm"]})),
    ("Data2Vec2AudioForCTC", Data2Vec2AudioConfig(**{**d2v2_cases.AUDIO, **d2v2_cases.AUDIO_VARIANTS["alibi"]})),
    ("Data2Vec2AudioForSequenceClassification", Data2Vec2AudioConfig(**d2v2_cases.AUDIO)),
    ("Data2Vec2TextModel", Data2Vec2TextConfig(**{**d2v2_cases.TEXT, **d2v2_cases.TEXT_VARIANTS["sinusoidal"]})),
    ("Data2Vec2TextForSequenceClassification", Data2Vec2TextConfig(**d2v2_cases.TEXT)),
]
IDS = [arch for arch, _ in CLASSES]

# Runs model.pt2 files with d2v unimportable: isolated mode (-I: no PYTHONPATH, no cwd on the
# path), started outside the checkout.
PT2_RUNNER = textwrap.dedent(
    """
    import json, sys
    # d2v may be installed in this environment: make it unimportable, so loading the program
    # cannot lean on it (a program that needed d2v's classes would fail here)
    for name in ("d2v_common", "d2v_torch", "d2v_tf", "crosscheck"):
        sys.modules[name] = None
    import numpy as np, torch
    try:
        import d2v_torch  # noqa: F401
        d2v_importable = True
    except ImportError:
        d2v_importable = False
    jobs = json.load(open(sys.argv[1]))
    for job in jobs:
        inputs = {k: torch.from_numpy(v) for k, v in np.load(job["inputs"]).items()}
        with torch.no_grad():
            out = torch.export.load(job["artifact"]).module()(**inputs)
        np.savez(job["outputs"], **{k: v.float().numpy() for k, v in out.items()})
    print(json.dumps({"d2v_importable": d2v_importable}))
    """
)


def _model(arch, config):
    torch.manual_seed(0)
    return getattr(d2v_torch, arch)(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Per class: artifacts, the inputs at the check shape and the eager outputs there."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    warnings.simplefilter("ignore")
    for arch, config in CLASSES:
        model = _model(arch, config)
        folder = root / arch
        folder.mkdir()
        sample = common.sample_inputs(config, arch, batch_size=2)
        program = torch_export.export_program(model, sample)
        torch.export.save(program, str(folder / "model.pt2"))
        torch_export.write_onnx(program, str(folder / "model.onnx"))
        sample_batch = next(iter(sample.values())).shape[0]
        batch, length = common.validation_shape(config, arch, common.ExportOptions())
        check = common.sample_inputs(config, arch, batch, length, seed=1)
        assert next(iter(check.values())).shape[0] != sample_batch
        if length is not None:
            assert next(iter(check.values())).shape[-1] != next(iter(sample.values())).shape[-1]
        np.savez(folder / "inputs.npz", **check)
        out[arch] = dict(folder=folder, inputs=check, eager=torch_export.run_eager(model, check, arch, config))
    return out


@pytest.fixture(scope="module")
def pt2_outputs(exported, tmp_path_factory):
    """Every model.pt2 run in one subprocess where d2v is not importable."""
    root = tmp_path_factory.mktemp("pt2run")
    script = root / "run_pt2.py"
    script.write_text(PT2_RUNNER)
    jobs = [dict(artifact=str(e["folder"] / "model.pt2"), inputs=str(e["folder"] / "inputs.npz"),
                 outputs=str(e["folder"] / "pt2_out.npz")) for e in exported.values()]
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script), str(root / "jobs.json")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    return status, {arch: dict(np.load(e["folder"] / "pt2_out.npz")) for arch, e in exported.items()}


def _assert_close(eager: dict, got: dict, what: str):
    assert set(got) == set(eager), f"{what}: outputs {sorted(got)} vs eager {sorted(eager)}"
    assert eager, f"{what}: no outputs"
    for key, want in eager.items():
        assert got[key].shape == want.shape, f"{what} {key}: {got[key].shape} vs {want.shape}"
        diff = float(np.max(np.abs(got[key] - want)))
        assert diff <= TOLERANCE, f"{what} {key}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("arch", IDS)
def test_onnx_in_onnxruntime_matches_eager_at_another_shape(exported, arch):
    import onnx

    entry = exported[arch]
    path = str(entry["folder"] / "model.onnx")
    graph = onnx.load(path).graph
    config = dict(CLASSES)[arch]
    assert [i.name for i in graph.input] == list(common.input_names(config, arch))
    assert [o.name for o in graph.output] == list(entry["eager"])
    _assert_close(entry["eager"], torch_export.ONNX.run(path, entry["inputs"]), f"{arch} onnx")


@pytest.mark.parametrize("arch", IDS)
def test_pt2_without_d2v_matches_eager_at_another_shape(exported, pt2_outputs, arch):
    status, outputs = pt2_outputs
    assert status["d2v_importable"] is False
    _assert_close(exported[arch]["eager"], outputs[arch], f"{arch} pt2")


def test_names_follow_hf():
    text = Data2VecTextConfig(**TEXT)
    assert common.input_names(text, "Data2VecTextModel") == ("input_ids", "attention_mask")
    typed = Data2VecTextConfig(**{**TEXT, "type_vocab_size": 2})
    assert common.input_names(typed, "Data2VecTextModel") == ("input_ids", "attention_mask", "token_type_ids")
    assert common.input_names(Data2VecAudioConfig(), "Data2VecAudioForCTC") == ("input_values", "attention_mask")
    assert common.input_names(Data2VecVisionConfig(), "Data2VecVisionModel") == ("pixel_values",)
    assert common.output_fields("Data2VecTextForQuestionAnswering") == ("start_logits", "end_logits")
    assert common.output_fields("Data2VecAudioForXVector") == ("logits", "embeddings")
    assert set(common.EXPORTABLE_ARCHITECTURES) == set(IDS)


def test_torch_export_of_the_model_itself_returns_its_output_class():
    """Outputs are pytrees: torch.export.export(model, kwargs=...) works on the class as is."""
    arch, config = CLASSES[3]
    model = _model(arch, config)
    inputs = torch_export.to_tensors(common.sample_inputs(config, arch))
    program = torch.export.export(model, (), inputs, strict=False)
    out = program.module()(**inputs)
    assert type(out).__name__ == "SequenceClassifierOutput"
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(**inputs).logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny text classifier checkpoint with preprocessing files beside it."""
    src = tmp_path_factory.mktemp("ckpt") / "src"
    arch, config = CLASSES[3]
    _model(arch, config).save_pretrained(str(src))
    (src / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    (src / "special_tokens_map.json").write_text("{}")
    return src


def test_cli_writes_artifact_config_and_preprocessing_files(checkpoint, tmp_path, capsys):
    dst = tmp_path / "out"
    assert torch_export.main([str(checkpoint), str(dst), "--format", "onnx"]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "model.onnx", "special_tokens_map.json", "tokenizer_config.json"]
    printed = capsys.readouterr().out
    assert "logits" in printed and "max abs diff" in printed and "input_ids(3, 21)" in printed
    assert [p for p in os.listdir(tmp_path) if p != "out"] == []  # no staging folder left

    # an existing DST is kept unless --overwrite
    assert torch_export.main([str(checkpoint), str(dst), "--format", "torch-export"]) == 2
    assert "already exists" in capsys.readouterr().err and "--overwrite" not in os.listdir(dst)
    assert "model.onnx" in os.listdir(dst)
    assert torch_export.main([str(checkpoint), str(dst), "--format", "torch-export", "--overwrite", "--quiet"]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "model.pt2", "special_tokens_map.json", "tokenizer_config.json"]
    assert capsys.readouterr().out == ""
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "onnx", "--dtype", "bfloat16"], "format 'onnx' does not take --dtype"),
        (["--format", "torch-export", "--opset", "17"], "does not take --opset"),
        (["--format", "onnx", "--batch-size", "0"], "positive integer"),
        (["--format", "onnx", "--architecture", "Data2VecTextForPreTraining"], "unknown architecture"),
        (["--format", "onnx", "--architecture", "Data2VecVisionModel"], "is a vision model but"),
    ],
)
def test_cli_rejects_unsupported_options_before_any_work(checkpoint, tmp_path, capsys, argv, message):
    dst = tmp_path / "out"
    assert torch_export.main([str(checkpoint), str(dst), *argv]) == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_cli_bad_source_and_unknown_format(tmp_path, capsys):
    dst = tmp_path / "out"
    assert torch_export.main([str(tmp_path / "missing"), str(dst), "--format", "onnx"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert torch_export.main([str(tmp_path / "empty"), str(dst), "--format", "onnx"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: not one of the choices
        torch_export.main([str(tmp_path / "empty"), str(dst), "--format", "tflite"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(common.ExportError, match="unknown export format 'tflite'"):
        common.export_checkpoint(tmp_path / "empty", dst, "tflite")
    with pytest.raises(SystemExit):  # the torch CLI does not offer the Keras formats
        torch_export.main([str(tmp_path / "empty"), str(dst), "--format", "saved-model"])
    assert not dst.exists()


def test_failed_validation_or_export_leaves_no_destination(checkpoint, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "out"
    real_run = torch_export.ONNX.run

    def off_by_a_little(path, inputs):
        return {k: v + 1e-3 for k, v in real_run(path, inputs).items()}

    monkeypatch.setitem(common._FORMATS, "onnx", common.ExportFormat(
        **{**torch_export.ONNX.__dict__, "run": off_by_a_little}))
    assert torch_export.main([str(checkpoint), str(dst), "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "differs from the eager model" in err and "nothing written" in err
    assert os.listdir(tmp_path) == []

    def broken_export(model, staging_dir, sample, options):
        open(os.path.join(staging_dir, "model.onnx"), "wb").write(b"half")
        raise RuntimeError("exporter crashed")

    monkeypatch.setitem(common._FORMATS, "onnx", common.ExportFormat(
        **{**torch_export.ONNX.__dict__, "export": broken_export}))
    assert torch_export.main([str(checkpoint), str(dst), "--format", "onnx"]) == 2
    assert "exporter crashed" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_bfloat16_pt2_validates_against_bfloat16_eager(tmp_path, capsys):
    """float32 pixels in and logits out; the weights and compute in bfloat16."""
    src, dst = tmp_path / "src", tmp_path / "bf16"
    arch, config = CLASSES[13]
    _model(arch, config).save_pretrained(str(src))
    assert torch_export.main([str(src), str(dst), "--format", "torch-export", "--dtype", "bfloat16"]) == 0
    assert "tolerance 5e-02" in capsys.readouterr().out
    program = torch.export.load(str(dst / "model.pt2"))
    assert {p.dtype for p in program.state_dict.values() if p.is_floating_point()} == {torch.bfloat16}


# ------------------------------------------------------------------------------ compile / trace
VISION_BIAS = {
    "per-layer": dict(use_relative_position_bias=True),
    "shared-bias": dict(use_shared_relative_position_bias=True),
}


class _FirstOutput(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values, return_dict=False)[0]


@pytest.mark.parametrize("bias", list(VISION_BIAS))
@pytest.mark.parametrize("arch", [a for a in IDS if a.startswith("Data2VecVision")])  # 1.0: relative position bias
def test_vision_relative_bias_compiles_and_traces(arch, bias):
    """torch.compile (full graph: no numpy left in forward) and jit.trace equal eager."""
    config = Data2VecVisionConfig(**vision_cases.SMALL, **VISION_BIAS[bias])
    model = _model(arch, config)
    x = torch.from_numpy(common.sample_inputs(config, arch)["pixel_values"])
    with torch.no_grad():
        eager = model(x, return_dict=False)[0]
        traced = torch.jit.trace(_FirstOutput(model), (x,), check_trace=False)
        torch.testing.assert_close(traced(x), eager, atol=1e-5, rtol=0)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, return_dict=False)[0], eager, atol=1e-5, rtol=0)


def test_vision_relative_bias_compiles_with_inductor():
    """The default torch.compile backend (inductor, generated C++) on the per-layer and shared
    bias configuration of the base checkpoints."""
    config = Data2VecVisionConfig(**vision_cases.SMALL, use_relative_position_bias=True,
                                  use_shared_relative_position_bias=True)
    model = _model("Data2VecVisionForImageClassification", config)
    x = torch.from_numpy(common.sample_inputs(config, "Data2VecVisionForImageClassification")["pixel_values"])
    with torch.no_grad():
        eager = model(x).logits
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model)(x).logits, eager, atol=1e-5, rtol=0)


def test_relative_position_index_is_a_buffer_cached_per_grid():
    config = Data2VecVisionConfig(**vision_cases.SMALL, use_relative_position_bias=True)
    model = _model("Data2VecVisionModel", config)
    bias = model.encoder.layer[0].attention.attention.relative_position_bias
    assert any(n.endswith("relative_position_index") for n, _ in model.named_buffers())
    assert not any(k.endswith("relative_position_index") for k in model.state_dict())  # not a checkpoint key
    grid = (3, 5)
    first = bias._index(grid, torch.device("cpu"))
    assert bias._index(grid, torch.device("cpu")) is first  # computed once per grid
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        out = model(x, interpolate_pos_encoding=True).last_hidden_state
    assert out.shape == (1, 16, 32)


# ------------------------------------------------------------------------------ crosscheck --runtimes
def test_crosscheck_runtime_columns():
    from crosscheck.__main__ import _format_table
    from crosscheck.cases import all_cases
    from crosscheck.runner import check_case
    from crosscheck.runtimes import parse_runtimes

    cases = {c.name: c for c in all_cases("small", ["text"])}
    row = check_case(cases["text-tokcls-relk"], with_round_trips=False, runtimes=("onnx",))
    assert row.ok and row.runtimes["onnx"].max_diff <= 1e-4 and row.runtimes["onnx"].skipped is None
    xattn = check_case(cases["text-model-xattn"], with_round_trips=False, runtimes=("onnx",))
    assert xattn.runtimes["onnx"].skipped and xattn.runtimes["onnx"].cell() == "n/a"
    table = _format_table([row, xattn], False, ["onnx"])
    assert "onnx" in table.splitlines()[0] and f"{row.runtimes['onnx'].max_diff:.2e}" in table
    with pytest.raises(ValueError, match="unknown runtime"):
        parse_runtimes("onnx,tensorrt")


def test_source_may_be_a_hub_id(checkpoint, tmp_path, monkeypatch):
    """SRC as a hub id, served offline from a hub cache built on disk (no network)."""
    from tests.hubcache import folder_files, make_hub_cache, serve_offline

    cache = tmp_path / "cache"
    make_hub_cache(cache, "someone/d2v-text-cls", folder_files(checkpoint))
    serve_offline(monkeypatch, cache)
    dst = tmp_path / "out"
    assert torch_export.main(["someone/d2v-text-cls", str(dst), "--format", "onnx", "--quiet"]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "model.onnx", "special_tokens_map.json", "tokenizer_config.json"]


@pytest.mark.parametrize("case_name", ["audio-ctc-adapter", "text-qa-relkq"])
def test_crosscheck_runtime_cases_that_needed_more(case_name):
    # audio-ctc-adapter: the adapter's strided convs leave a frame-count guard torch.export cannot
    # prove over the declared length range; text-qa: its answer positions are labels, not inputs.
    from crosscheck.cases import all_cases
    from crosscheck.runner import check_case

    case = {c.name: c for c in all_cases("small")}[case_name]
    row = check_case(case, with_round_trips=False, runtimes=("torch-export",))
    cell = row.runtimes["torch-export"]
    assert cell.skipped is None and cell.error is None and cell.max_diff <= 1e-4, cell
