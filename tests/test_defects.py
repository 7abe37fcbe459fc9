"""Regression tests for issue 16, defects a new user hits in the first hour: config keyword
overrides and label maps, hostile configs, misleading diagnostics, tf.distribute losses."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import d2v_tf
import d2v_torch
from d2v_common import convert
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.loader.matching import ConfigCheckpointMismatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=16,
              patch_size=8, use_relative_position_bias=True)
FRAMEWORKS = {
    "torch": d2v_torch.Data2VecVisionForImageClassification,
    "tf": d2v_tf.TFData2VecVisionForImageClassification,
}


def _head_weight(model) -> tuple:
    return model.state_arrays()["classifier.weight"].shape


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 3-label vision classifier (safetensors + tf_model.h5) and a base vision model."""
    root = tmp_path_factory.mktemp("ckpt")
    head, base = str(root / "head3"), str(root / "base")
    torch.manual_seed(0)
    d2v_torch.Data2VecVisionForImageClassification(Data2VecVisionConfig(**VISION, num_labels=3)).save_pretrained(
        head, tf_h5=True)
    d2v_torch.Data2VecVisionModel(Data2VecVisionConfig(**VISION)).save_pretrained(base)
    return {"head": head, "base": base}


# ------------------------------------------------------------- 1. keyword overrides, labels
def test_config_num_labels_override_rebuilds_label_maps(checkpoints):
    config = Data2VecVisionConfig.from_pretrained(checkpoints["head"], num_labels=5)
    labels = {i: f"LABEL_{i}" for i in range(5)}
    assert config.id2label == labels and config.label2id == {v: k for k, v in labels.items()}
    assert config.num_labels == 5
    assert Data2VecVisionConfig.from_pretrained(checkpoints["head"], hidden_dropout_prob=0.25).hidden_dropout_prob == 0.25
    on_disk = Data2VecVisionConfig.from_pretrained(checkpoints["head"])
    assert on_disk.copy(num_labels=4).num_labels == 4
    assert Data2VecVisionConfig.from_dict(on_disk.to_dict(), num_labels=6).num_labels == 6
    named = {0: "a", 1: "b"}
    assert Data2VecVisionConfig.from_dict(on_disk.to_dict(), num_labels=2, id2label=named).id2label == named
    with pytest.raises(ValueError, match="num_labels=4 disagrees"):
        Data2VecVisionConfig.from_dict(on_disk.to_dict(), num_labels=4, id2label=named)


def test_config_attribute_set_later_is_saved(tmp_path):
    config = Data2VecTextConfig(num_hidden_layers=1)
    config.my_key = {"a": 1}
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["my_key"] == {"a": 1}
    assert Data2VecTextConfig.from_pretrained(tmp_path).my_key == {"a": 1}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_from_pretrained_num_labels(checkpoints, framework):
    cls = FRAMEWORKS[framework]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls.from_pretrained(checkpoints["base"], num_labels=10)  # base checkpoint: a new 10-way head
    assert model.config.num_labels == 10 and _head_weight(model) == (10, 32)
    assert "classifier.weight" in model.load_report.newly_initialized
    with pytest.raises(ValueError, match=r"classifier\.weight.*\(3, 32\).*\(5, 32\).*ignore_mismatched_sizes"):
        cls.from_pretrained(checkpoints["head"], num_labels=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls.from_pretrained(checkpoints["head"], num_labels=5, ignore_mismatched_sizes=True)
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(5)} and _head_weight(model) == (5, 32)
    report = model.load_report
    assert {"classifier.weight", "classifier.bias"} <= set(report.newly_initialized)
    assert ("classifier.weight", (3, 32), (5, 32)) in report.mismatched
    assert "classifier.weight" in str(report) and not report.clean


# --------------------------------------------------------------------- 6. hostile configs
def _with_config(src, dst, **changes):
    os.makedirs(dst)
    for name in os.listdir(src):
        if name != "config.json":
            shutil.copy(os.path.join(src, name), dst)
    data = json.loads(open(os.path.join(src, "config.json")).read())
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump({**data, **changes}, f)
    return dst


@pytest.mark.parametrize("field", ["num_hidden_layers", "hidden_size", "intermediate_size", "image_size"])
def test_config_sizes_beyond_bounds_name_the_field(field):
    with pytest.raises(ValueError, match=rf"Data2VecVisionConfig\.{field} .*beyond the supported maximum"):
        Data2VecVisionConfig(**{field: 10_000_000})
    assert f"{field} <= " in Data2VecVisionConfig.__doc__  # the bound is documented


@pytest.mark.parametrize("checkpoint_format", ["safetensors", "tf-h5"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("changes, match", [
    (dict(num_hidden_layers=300), r"num_hidden_layers = 300 but the checkpoint .* holds 2 encoder layer"),
    (dict(hidden_size=4096, num_attention_heads=4), r"has shape \(1, 1, 32\) but the model expects \(1, 1, 4096\)"),
    (dict(intermediate_size=100000), r"intermediate\.dense\.weight: checkpoint .* \(37, 32\) .* \(100000, 32\)"),
])
def test_config_that_does_not_fit_fails_from_the_header(checkpoints, tmp_path, framework, checkpoint_format,
                                                        changes, match):
    bad = _with_config(checkpoints["head"], str(tmp_path / "bad"), **changes)
    with pytest.raises(ConfigCheckpointMismatch, match=match):
        FRAMEWORKS[framework].from_pretrained(bad, checkpoint_format=checkpoint_format)


def test_config_of_another_family_fails_before_building(checkpoints, tmp_path):
    bad = _with_config(checkpoints["base"], str(tmp_path / "bad"), **{**Data2VecTextConfig().to_dict(),
                                                                          "num_hidden_layers": 2})
    with pytest.raises(ConfigCheckpointMismatch, match="lacks .* backbone tensor.*word_embeddings"):
        d2v_torch.Data2VecTextModel.from_pretrained(bad)


HOSTILE_SCRIPT = textwrap.dedent("""
    import json, os, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import d2v_torch, d2v_tf
    from d2v_common import convert
    good, bads, out = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
    loaders = {"torch": d2v_torch.Data2VecVisionForImageClassification.from_pretrained,
               "tf": d2v_tf.TFData2VecVisionForImageClassification.from_pretrained,
               "convert": lambda p: convert.convert(p, out, "tf-h5")}
    for load in loaders.values():  # warm up every code path on a checkpoint that fits
        load(good)
        if os.path.isdir(out):
            import shutil; shutil.rmtree(out)
    rows = []
    for bad in bads:
        for name, load in loaders.items():
            peak, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
            try:
                load(bad)
                error = None
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            rows.append(dict(case=os.path.basename(bad), loader=name, error=error,
                             seconds=time.perf_counter() - start,
                             grew_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024))
    print(json.dumps(rows))
""")


def test_hostile_configs_fail_fast_without_memory(checkpoints, tmp_path):
    bads = [_with_config(checkpoints["head"], str(tmp_path / name), **changes) for name, changes in [
        ("hidden", dict(hidden_size=4_000_000)), ("layers", dict(num_hidden_layers=10_000_000)),
        ("layers-in-bounds", dict(num_hidden_layers=500, hidden_size=8192, num_attention_heads=8))]]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    run = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, checkpoints["head"], *bads, str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(rows) == 9
    for row in rows:
        assert row["error"] is not None, row
        assert row["seconds"] < 1.0 and row["grew_mb"] < 100, row
        field = {"hidden": "hidden_size", "layers": "num_hidden_layers", "layers-in-bounds": "num_hidden_layers"}
        assert field[row["case"]] in row["error"], row
        if row["case"] == "layers-in-bounds":
            assert "ConfigCheckpointMismatch" in row["error"] or row["loader"] == "convert", row
    assert not os.path.exists(tmp_path / "out")


def test_convert_cli_reports_config_checkpoint_mismatch(checkpoints, tmp_path, capsys):
    bad = _with_config(checkpoints["head"], str(tmp_path / "bad"), num_hidden_layers=300)
    assert convert.main([bad, str(tmp_path / "out"), "--to", "tf-h5"]) == convert.EXIT_MISMATCH
    err = capsys.readouterr().err
    assert "ConfigCheckpointMismatch" in err and "num_hidden_layers = 300" in err
    assert not os.path.exists(tmp_path / "out")


# ------------------------------------------------------------------------- 4. diagnostics
def test_convert_report_never_says_matched_before_failing(checkpoints, tmp_path, capsys):
    """A text config next to vision weights (same depth): the report names the problem."""
    text = Data2VecTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                              vocab_size=20, max_position_embeddings=20)
    bad = _with_config(checkpoints["base"], str(tmp_path / "bad"),
                       **{**text.to_dict(), "architectures": ["Data2VecTextModel"]})
    assert convert.main([bad, str(tmp_path / "out"), "--to", "tf-h5"]) == convert.EXIT_MISMATCH
    err = capsys.readouterr().err
    assert "all tensors matched" not in err and "word_embeddings" in err


def test_h5_report_lists_canonical_names(checkpoints):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(
            checkpoints["head"], checkpoint_format="tf-h5", num_hidden_layers=1)
    unexpected = model.load_report.unexpected
    assert unexpected and all(n.startswith("data2vec_vision.encoder.layer.1.") for n in unexpected), unexpected
    assert "data2vec_vision.encoder.layer.1.attention.attention.query.weight (tf_model.h5: " \
        "data2vec_vision/encoder/layer_._1/attention/attention/query/kernel:0)" in unexpected


# ------------------------------------------------------- 2. built-in losses under tf.distribute
_MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import d2v_tf
    from d2v_common.configs import CONFIG_CLASSES

    rng = np.random.default_rng(0)
    TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AUDIO = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, conv_dim=[8, 8],
                 conv_stride=[5, 2], conv_kernel=[10, 3], num_conv_pos_embeddings=1, conv_pos_kernel_size=4,
                 num_conv_pos_embedding_groups=2, classifier_proj_size=8, mask_time_prob=0.0, layerdrop=0.0,
                 hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, final_dropout=0.0)
    VISION = dict(TINY, image_size=8, patch_size=4, drop_path_rate=0.0, out_indices=[1, 2, 2, 2], pool_scales=[1],
                  auxiliary_channels=8)
    n = 8
    token_labels = rng.integers(0, 3, (n, 6))
    token_labels[:4, 1:] = -100  # the first replica's examples hold far fewer labels
    CASES = {
        "TFData2VecTextForSequenceClassification": ("data2vec-text", dict(TINY, vocab_size=20, num_labels=3),
            {"input_ids": rng.integers(3, 20, (n, 6))}, rng.integers(0, 3, n)),
        "TFData2VecTextForTokenClassification": ("data2vec-text", dict(TINY, vocab_size=20, num_labels=3),
            {"input_ids": rng.integers(3, 20, (n, 6))}, token_labels),
        "TFData2VecAudioForSequenceClassification": ("data2vec-audio", dict(AUDIO, num_labels=3),
            {"input_values": rng.standard_normal((n, 400)).astype("float32")}, rng.integers(0, 3, n)),
        "TFData2VecVisionForImageClassification": ("data2vec-vision", dict(VISION, num_labels=3),
            {"pixel_values": rng.standard_normal((n, 3, 8, 8)).astype("float32")}, rng.integers(0, 3, n)),
    }

    def build(name):
        model_type, config, _, _ = CASES[name]
        return getattr(d2v_tf, name)(CONFIG_CLASSES[model_type](**config))

    def train(name, strategy, start):
        _, _, x, y = CASES[name]
        with strategy.scope():
            model = build(name)
            model.load_arrays(start)
            model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        validation = (x, y) if name.endswith("TextForSequenceClassification") else None  # one is enough
        history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, validation_data=validation)
        return model.state_arrays(), history.history

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name in CASES:
        start = build(name).state_arrays()  # random weights, the same for both runs
        one, h1 = train(name, tf.distribute.get_strategy(), start)
        two, h2 = train(name, mirrored, start)
        out[name] = {
            "replicas": mirrored.num_replicas_in_sync,
            "weights": max(float(np.abs(one[k] - two[k]).max()) for k in one),
            "moved": max(float(np.abs(one[k] - start[k]).max()) for k in one),
            **{k: [h1[k][0], h2[k][0]] for k in ("loss", "val_loss") if k in h1},
        }
    print("RESULT " + json.dumps(out))
""")


def test_builtin_losses_under_mirrored_strategy_match_one_device(tmp_path):
    """fit with the built-in loss on 2 logical CPUs == one device on the same global batch: each
    family's classifier, and token classification whose replicas hold unequal label counts.
    (Segmentation is left out: its BatchNorm normalises each replica's batch, as in DDP.)"""
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    run = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(results) == 4 and "val_loss" in results["TFData2VecTextForSequenceClassification"]
    for name, r in results.items():
        assert r["replicas"] == 2 and r["moved"] > 1e-3, (name, r)
        assert r["weights"] <= 1e-5, (name, r)
        for key in ("loss", "val_loss"):
            if key not in r:
                continue
            one, two = r[key]
            assert abs(one - two) <= 1e-5 * max(1.0, abs(one)), (name, key, r)


# --------------------------------------------------------- 4. input types, crosscheck selection
TINY_TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, vocab_size=20)
TINY_AUDIO = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, conv_dim=[8, 8],
                  conv_stride=[5, 2], conv_kernel=[10, 3], num_conv_pos_embeddings=1, conv_pos_kernel_size=4,
                  num_conv_pos_embedding_groups=2)


@pytest.mark.parametrize("build, value, match", [
    (lambda: d2v_torch.Data2VecVisionForImageClassification(Data2VecVisionConfig(**VISION)),
     np.zeros((1, 3, 16, 16), np.float32), r"pixel_values must be a torch tensor, got numpy\.ndarray.*torch\.as_tensor"),
    (lambda: d2v_torch.Data2VecVisionModel(Data2VecVisionConfig(**VISION)),
     torch.zeros((1, 3, 16, 16), dtype=torch.float64), r"pixel_values is float64 but the model computes in float32"),
    (lambda: d2v_torch.Data2VecTextForSequenceClassification(Data2VecTextConfig(**TINY_TEXT)),
     np.array([[3, 4, 5]]), r"input_ids must be a torch tensor, got numpy\.ndarray"),
    (lambda: d2v_torch.Data2VecTextModel(Data2VecTextConfig(**TINY_TEXT)),
     torch.tensor([[3.0, 4.0]]), r"input_ids must be an integer tensor .*got float32.*input_ids\.to\(torch\.int64\)"),
    (lambda: d2v_torch.Data2VecAudioForCTC(Data2VecAudioConfig(**TINY_AUDIO)),
     np.zeros((1, 400), np.float32), r"input_values must be a torch tensor, got numpy\.ndarray"),
    (lambda: d2v_torch.Data2VecAudioForXVector(Data2VecAudioConfig(**TINY_AUDIO)),
     torch.zeros((1, 400), dtype=torch.float64), r"input_values is float64 but the model computes in float32"),
])
def test_torch_models_say_which_input_type_they_need(build, value, match):
    with pytest.raises(TypeError, match=match):
        build()(value)


def test_torch_input_dtype_follows_the_model_and_autocast():
    model = d2v_torch.Data2VecVisionModel(Data2VecVisionConfig(**VISION))
    with pytest.raises(TypeError, match="float32 but the model computes in bfloat16"):
        model.to(torch.bfloat16)(torch.zeros((1, 3, 16, 16)))
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for itself
        model(torch.zeros((1, 3, 16, 16), dtype=torch.bfloat16))


def test_keras_float_ids_say_what_to_pass():
    model = d2v_tf.TFData2VecTextModel(Data2VecTextConfig(**TINY_TEXT))
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor .*tf\.cast\(input_ids, tf\.int64\)"):
        model(np.array([[3.0, 4.0]], np.float32))


def _crosscheck(*args):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "crosscheck", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_crosscheck_lists_and_selects_cases_by_name_or_class():
    from crosscheck.__main__ import select_cases
    from crosscheck.cases import all_cases

    listed = _crosscheck("--list", "--family", "vision")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.strip().splitlines()]
    cases = all_cases("small", ["vision"])
    assert rows == [[c.name, c.architecture] for c in cases]
    assert [c.name for c in select_cases(cases, ["vision-cls-plain"])] == ["vision-cls-plain"]
    by_class = select_cases(cases, ["TFData2VecVisionForImageClassification"])
    assert by_class and all(c.architecture == "Data2VecVisionForImageClassification" for c in by_class)
    assert {c.name for c in select_cases(cases, ["relbias"])} == {c.name for c in cases if "relbias" in c.name}
    unknown = _crosscheck("--case", "no-such-case")
    assert unknown.returncode == 2 and "no case matches 'no-such-case'" in unknown.stderr
    assert "vision-cls-plain" in unknown.stderr and "Data2VecTextModel" in unknown.stderr
