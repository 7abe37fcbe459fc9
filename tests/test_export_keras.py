"""Keras serving artifacts: every class as a SavedModel (and three as LiteRT) equals d2v torch
when run without d2v, at a batch size and length the export never saw; bad requests are clear
errors that leave nothing behind."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import keras
import torch

import d2v_torch
import d2v_tf
from crosscheck.cases import all_cases
from d2v_common import export as shared
from d2v_tf import export as keras_export
from tests.d2v_free import D2V_BLOCKER

ARCHITECTURES = shared.EXPORTABLE_ARCHITECTURES
LITERT_ARCHITECTURES = (
    "Data2VecVisionForImageClassification",
    "Data2VecTextForSequenceClassification",
    "Data2VecAudioForCTC",
    # data2vec 2.0 classes the fairseq fixtures do not cover (tests/test_export_data2vec2.py)
    "Data2Vec2AudioForSequenceClassification",
    "Data2Vec2TextModel",
)
# Not the export sample's shape (model.export traces none; the CLI's sample is batch 2 and
# DEFAULT_LENGTH): the artifacts must take any batch and length.
CHECK_BATCH = 3
CHECK_LENGTH = {"text": 11, "audio": 2345}

# Runs in a fresh interpreter that cannot import d2v: only TensorFlow and LiteRT.
RUNNER = D2V_BLOCKER + textwrap.dedent(
    """

    report = {}
    for job in json.load(open(sys.argv[1])):
        inputs = dict(np.load(job["inputs"]))
        if job["kind"] == "saved-model":
            import tensorflow as tf

            loaded = tf.saved_model.load(job["path"])
            fn = loaded.signatures["serving_default"]
            specs = fn.structured_input_signature[1]
            feed = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
            out = {k: v.numpy() for k, v in fn(**feed).items()}
            keras_style = loaded.serve(feed)  # Keras' endpoint name takes the same dict
            assert all(np.array_equal(keras_style[k].numpy(), v) for k, v in out.items())
            shapes = {k: [d for d in s.shape.as_list()] for k, s in specs.items()}
        else:
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(model_path=job["path"]).get_signature_runner("serving_default")
            details = runner.get_input_details()
            out = runner(**{k: v.astype(details[k]["dtype"]) for k, v in inputs.items()})
            shapes = {k: [None if d < 0 else int(d) for d in v["shape_signature"]] for k, v in details.items()}
        np.savez(job["out"], **out)
        report[job["out"]] = shapes
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("d2v_common", "d2v_torch", "d2v_tf"))
    json.dump({"shapes": report, "leaked": leaked}, sys.stdout)
    """
)


def case_for(architecture):
    return next(c for c in all_cases() if c.architecture == architecture)


def config_for(architecture):
    """The cross-check's small config; one layer for text and audio (tracing time grows with
    depth), vision keeps the four its segmentation head reads."""
    config = case_for(architecture).config
    return config if shared.family_of_architecture(architecture) == "vision" else config.copy(num_hidden_layers=1)


def check_inputs(config, architecture):
    family = shared.family_of_architecture(architecture)
    return shared.sample_inputs(config, architecture, CHECK_BATCH, CHECK_LENGTH.get(family), seed=3)


def torch_outputs(src, architecture, inputs):
    model = getattr(d2v_torch, architecture).from_pretrained(src).eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()},
                    **shared.eager_call_kwargs(model.config, architecture))
    return {k: out[k].numpy() for k in shared.output_fields(architecture) if out.get(k) is not None}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Export every class once (right after construction, no call first), run all artifacts in
    one d2v-free subprocess; returns per (format, architecture) the artifact's outputs, the
    torch reference and the signature's input shapes."""
    root = tmp_path_factory.mktemp("served")
    jobs, expected = [], {}
    for arch in ARCHITECTURES:
        config = config_for(arch)
        model = getattr(d2v_tf, "TF" + arch)(config)
        src = root / f"{arch}-ckpt"
        model.save_pretrained(src)
        inputs = check_inputs(config, arch)
        np.savez(root / f"{arch}-inputs.npz", **inputs)
        reference = torch_outputs(src, arch, inputs)
        model.export(root / f"{arch}-sm")  # Keras' API, tf_saved_model by default
        kinds = [("saved-model", root / f"{arch}-sm")]
        if arch in LITERT_ARCHITECTURES:
            model.export(root / f"{arch}.tflite", format="litert")
            kinds.append(("litert", root / f"{arch}.tflite"))
        for kind, path in kinds:
            out = root / f"{arch}-{kind}-out.npz"
            jobs.append({"kind": kind, "path": str(path), "inputs": str(root / f"{arch}-inputs.npz"), "out": str(out)})
            expected[(kind, arch)] = (reference, str(out))
    manifest = root / "jobs.json"
    manifest.write_text(json.dumps(jobs))
    script = root / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script), str(manifest)], capture_output=True, text=True,
                          cwd=root, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["leaked"] == []
    return {key: (ref, dict(np.load(out)), report["shapes"][out]) for key, (ref, out) in expected.items()}


def _assert_close(reference, got, tolerance):
    assert list(got) and sorted(got) == sorted(reference)
    for key, want in reference.items():
        assert got[key].shape == want.shape, key
        diff = float(np.max(np.abs(got[key] - want)))
        assert diff <= tolerance, f"{key}: {diff:.3e} > {tolerance:.0e}"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_saved_model_without_d2v_equals_torch(served, architecture):
    reference, got, shapes = served[("saved-model", architecture)]
    _assert_close(reference, got, 1e-4)
    config = config_for(architecture)
    assert sorted(shapes) == sorted(shared.input_names(config, architecture))
    for name, axes in shared.dynamic_axes(config, architecture).items():
        assert all(shapes[name][axis] is None for axis in axes), (name, shapes[name])


@pytest.mark.parametrize("architecture", LITERT_ARCHITECTURES)
def test_litert_without_d2v_equals_torch(served, architecture):
    reference, got, shapes = served[("litert", architecture)]
    _assert_close(reference, got, 1e-3)
    config = config_for(architecture)
    for name, axes in shared.dynamic_axes(config, architecture).items():
        assert all(shapes[name][axis] is None for axis in axes), (name, shapes[name])


def test_pretraining_wrapper_exports_its_student(tmp_path):
    config = config_for("Data2VecTextModel")
    model = d2v_tf.TFData2VecTextForPreTraining(config)
    model.export(tmp_path / "sm")
    inputs = check_inputs(config, "Data2VecTextModel")
    got = keras_export.run_saved_model(tmp_path / "sm", inputs)
    want = keras_export.run_eager(model.student, inputs)
    _assert_close(want, got, 1e-5)


def test_saved_model_export_is_all_or_nothing(tmp_path):
    """model.export replaces an earlier export whole; one that fails leaves it untouched."""
    config = config_for("Data2VecVisionForImageClassification")
    model = d2v_tf.TFData2VecVisionForImageClassification(config)
    model.export(tmp_path / "sm")
    first = sorted(os.listdir(tmp_path / "sm"))
    with pytest.raises(ValueError, match="pixel_values"):  # an image size the model has no positions for
        model.export(tmp_path / "sm", input_signature={"pixel_values": (None, 3, 40, 40)})
    assert sorted(os.listdir(tmp_path)) == ["sm"] and sorted(os.listdir(tmp_path / "sm")) == first
    other = d2v_tf.TFData2VecVisionForImageClassification(config)
    other.export(tmp_path / "sm")
    inputs = check_inputs(config, "Data2VecVisionForImageClassification")
    _assert_close(keras_export.run_eager(other, inputs), keras_export.run_saved_model(tmp_path / "sm", inputs), 1e-5)
    assert sorted(os.listdir(tmp_path)) == ["sm"]


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = d2v_tf.TFData2VecTextForSequenceClassification(config_for("Data2VecTextForSequenceClassification"))
    model.save_pretrained(root / "src")
    (root / "src" / "tokenizer.json").write_text("{}")  # preprocessing files travel along
    return root / "src", model


def test_cli_writes_a_validated_saved_model(text_checkpoint, tmp_path, capsys):
    src, model = text_checkpoint
    dst = tmp_path / "served"
    assert keras_export.main([str(src), str(dst), "--format", "saved-model"]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "logits" in printed and "(3, 21)" in printed  # 2nd batch and length
    assert {"saved_model.pb", "variables", "config.json", "tokenizer.json"} <= set(os.listdir(dst))
    inputs = check_inputs(model.config, "Data2VecTextForSequenceClassification")
    _assert_close(keras_export.run_eager(model, inputs), keras_export.run_saved_model(dst, inputs), 1e-4)


def test_d2v_export_console_entry_writes_litert(text_checkpoint, tmp_path):
    src, model = text_checkpoint
    dst = tmp_path / "lite"
    assert shared.main([str(src), str(dst), "--format", "litert", "--quiet"]) == 0  # what d2v-export runs
    assert sorted(os.listdir(dst)) == ["config.json", "model.tflite", "tokenizer.json"]
    inputs = check_inputs(model.config, "Data2VecTextForSequenceClassification")
    _assert_close(keras_export.run_eager(model, inputs), keras_export.run_litert(dst / "model.tflite", inputs), 1e-3)


def test_fixed_input_signature(text_checkpoint, tmp_path):
    """Keras' input_signature fixes shapes (LiteRT runtimes without dynamic shapes) and may
    leave out optional inputs; wrong names or ranks are refused."""
    _, model = text_checkpoint
    model.export(tmp_path / "m.tflite", format="litert", input_signature={"input_ids": keras.InputSpec(shape=(1, 7))})
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(tmp_path / "m.tflite")).get_signature_runner("serving_default")
    assert {k: list(v["shape_signature"]) for k, v in details.get_input_details().items()} == {"input_ids": [1, 7]}
    inputs = {"input_ids": check_inputs(model.config, "Data2VecTextForSequenceClassification")["input_ids"][:1, :7]}
    _assert_close(keras_export.run_eager(model, inputs), keras_export.run_litert(tmp_path / "m.tflite", inputs), 1e-3)
    with pytest.raises(ValueError, match=r"not \['pixel_values'\]"):
        model.export(tmp_path / "x", input_signature={"input_ids": (None, None), "pixel_values": (1, 3, 8, 8)})
    with pytest.raises(ValueError, match="rank 3, expected 2"):
        model.export(tmp_path / "x", input_signature={"input_ids": (None, None, 4)})
    with pytest.raises(ValueError, match="main input 'input_ids'"):
        model.export(tmp_path / "x", input_signature={"attention_mask": (None, None)})
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_litert_int8_variant_reports_its_error(text_checkpoint, tmp_path):
    _, model = text_checkpoint
    model.export(tmp_path / "fp32.tflite", format="litert")
    model.export(tmp_path / "int8.tflite", format="litert", quantize="dynamic-int8")
    inputs = check_inputs(model.config, "Data2VecTextForSequenceClassification")
    fp32 = keras_export.run_litert(tmp_path / "fp32.tflite", inputs)["logits"]
    int8 = keras_export.run_litert(tmp_path / "int8.tflite", inputs)["logits"]
    relative = float(np.max(np.abs(int8 - fp32)) / np.max(np.abs(fp32)))
    assert 0 < relative < 0.1  # quantised (not identical), still close
    assert os.path.getsize(tmp_path / "int8.tflite") < os.path.getsize(tmp_path / "fp32.tflite")


@pytest.mark.slow
def test_litert_int8_of_a_data2vec2_class(tmp_path):
    """The 1.0 classes' int8 option works for the 2.0 ones (ALiBi audio CTC here)."""
    architecture = "Data2Vec2AudioForCTC"
    model = d2v_tf.TFData2Vec2AudioForCTC(config_for(architecture))
    model.export(tmp_path / "fp32.tflite", format="litert")
    model.export(tmp_path / "int8.tflite", format="litert", quantize="dynamic-int8")
    inputs = check_inputs(model.config, architecture)
    fp32 = keras_export.run_litert(tmp_path / "fp32.tflite", inputs)["logits"]
    int8 = keras_export.run_litert(tmp_path / "int8.tflite", inputs)["logits"]
    relative = float(np.max(np.abs(int8 - fp32)) / np.max(np.abs(fp32)))
    assert 0 < relative < 0.1
    assert os.path.getsize(tmp_path / "int8.tflite") < os.path.getsize(tmp_path / "fp32.tflite")


# ------------------------------------------------------------------------------ bad requests
def test_unknown_format_is_a_clear_error(text_checkpoint, tmp_path, capsys):
    src, model = text_checkpoint
    with pytest.raises(ValueError, match="unknown export format 'onnx'.*tf_saved_model"):
        model.export(tmp_path / "x", format="onnx")
    with pytest.raises(SystemExit) as exit_info:
        keras_export.main([str(src), str(tmp_path / "y"), "--format", "torch-export"])  # a PyTorch format
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_existing_destination_is_left_alone(text_checkpoint, tmp_path, capsys):
    src, _ = text_checkpoint
    dst = tmp_path / "served"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert keras_export.main([str(src), str(dst), "--format", "litert"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(dst) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["served"]


def test_option_the_format_cannot_honour(text_checkpoint, tmp_path, capsys):
    src, model = text_checkpoint
    assert keras_export.main([str(src), str(tmp_path / "x"), "--format", "litert", "--dtype", "bfloat16"]) == 2
    assert "litert" in (err := capsys.readouterr().err) and "--dtype" in err
    with pytest.raises(ValueError, match=r"\.tflite"):
        model.export(tmp_path / "model", format="litert")
    with pytest.raises(ValueError, match="quantize"):
        model.export(tmp_path / "m.tflite", format="litert", quantize="int4")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_ops_litert_lacks_are_named_and_nothing_is_written(text_checkpoint, tmp_path, bfloat16_policy, capsys):
    """LiteRT's builtin kernels are float32 (and int8): a bfloat16 model cannot convert; the
    error names the ops and the way out, and neither the file nor DST appears."""
    src, _ = text_checkpoint
    model = d2v_tf.TFData2VecTextForSequenceClassification(config_for("Data2VecTextForSequenceClassification"))
    with pytest.raises(ValueError, match=r"TFData2VecTextForSequenceClassification cannot be converted to LiteRT: "
                                         r"no LiteRT builtin kernel for the TensorFlow op\(s\) .*MatMul.*bfloat16"):
        model.export(tmp_path / "m.tflite", format="litert")
    assert keras_export.main([str(src), str(tmp_path / "served"), "--format", "litert"]) == 2  # loads as bf16
    assert "cannot be converted to LiteRT" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ crosscheck --runtimes
def test_crosscheck_saved_model_and_litert_columns(capsys):
    from crosscheck.__main__ import main

    assert main(["--case", "audio-ctc-plain", "--runtimes", "saved-model,litert", "--no-round-trips", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    saved_model, litert = row["runtimes"]["saved-model"], row["runtimes"]["litert"]
    assert saved_model["ok"] and saved_model["skipped"] is None and saved_model["max_abs_diff"] <= 1e-4
    assert litert["ok"] and litert["skipped"] is None and litert["max_abs_diff"] <= 1e-3
    assert (saved_model["tolerance"], litert["tolerance"]) == (1e-4, 1e-3)


def test_runners_name_missing_inputs(tmp_path):
    model = d2v_tf.TFData2VecTextForSequenceClassification(config_for("Data2VecTextForSequenceClassification"))
    model.export(tmp_path / "sm")
    with pytest.raises(ValueError, match=r"missing \['attention_mask'\]"):
        keras_export.run_saved_model(tmp_path / "sm", {"input_ids": np.ones((1, 4), np.int64)})


def test_class_without_a_serving_signature_is_a_clear_error(tmp_path, monkeypatch):
    """A class left out of d2v_common.export's table (none is today) gets a ValueError naming
    the exportable classes, and nothing is written."""
    from d2v_common.data2vec2 import Data2Vec2TextConfig

    config = Data2Vec2TextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                                 vocab_size=50)
    model = d2v_tf.TFData2Vec2TextModel(config)
    others = tuple(a for a in shared.EXPORTABLE_ARCHITECTURES if a != "Data2Vec2TextModel")
    monkeypatch.setattr(shared, "EXPORTABLE_ARCHITECTURES", others)
    for path, format in ((tmp_path / "sm", "tf_saved_model"), (tmp_path / "m.tflite", "litert")):
        with pytest.raises(ValueError, match="TFData2Vec2TextModel has no serving signature"):
            model.export(path, format=format)
    assert os.listdir(tmp_path) == []
