"""d2v-convert: bit-exact round trips for every class, files transformers loads unchanged,
strictness (exit 1, nothing written) and an all-or-nothing destination."""

import json
import os
import subprocess
import sys
from importlib import metadata

import h5py
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from d2v_common import convert

from d2v_common.checkpoints import formats as checkpoint

from d2v_common.spec import layouts
from d2v_common.configs import Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import HF_ARCHITECTURES as ARCHITECTURES  # HF-parity classes (no data2vec 2.0)
from d2v_common.spec import weight_spec
from tests.oracle import d2v_config, random_hf_model
from crosscheck.cases import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXT = dict(tiny.TEXT, vocab_size=50, num_labels=3, position_embedding_type="relative_key")
AUDIO = dict(tiny.AUDIO_HEADS, num_labels=3)
# Square images and mean pooling: the settings HF's TF vision classes handle correctly.
VISION = dict(tiny.VISION, num_labels=3, use_relative_position_bias=True, use_mask_token=True,
              use_absolute_position_embeddings=True)
HF_CONFIGS = {"text": (transformers.Data2VecTextConfig, TEXT), "audio": (transformers.Data2VecAudioConfig, AUDIO),
              "vision": (transformers.Data2VecVisionConfig, VISION)}


def hf_cfg(family, **extra):
    cls, base = HF_CONFIGS[family]
    return cls(**{**base, **extra})


def hf_cfg_for(arch):
    extra = {"is_decoder": True} if arch.endswith("CausalLM") else {}
    if arch.endswith("QuestionAnswering"):
        extra["num_labels"] = 2  # start and end logits
    return hf_cfg(ARCHITECTURES[arch], **extra)


def inputs_for(arch):
    rng = np.random.default_rng(7)
    family = ARCHITECTURES[arch]
    if family == "text":
        shape = (2, 2, 7) if arch.endswith("MultipleChoice") else (2, 7)
        ids = rng.integers(3, TEXT["vocab_size"], size=shape)
        mask = np.ones(shape, dtype=np.int64)
        mask[..., 0, -2:] = 0
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if family == "audio":
        return {"input_values": torch.from_numpy(rng.standard_normal((2, 400)).astype(np.float32))}
    return {"pixel_values": torch.from_numpy(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))}


def run(*args):
    return convert.main([str(a) for a in args])


def tensors(path):
    return load_file(os.path.join(path, "model.safetensors"))


def assert_bit_exact(got, want):
    assert list(sorted(got)) == list(sorted(want))
    for name, a in want.items():
        a, b = np.asarray(a), np.asarray(got[name])  # checkpoint readers may return lazy tensors
        assert (b.dtype, b.shape) == (a.dtype, a.shape), name
        assert b.tobytes() == a.tobytes(), name


def leftovers(parent, keep):
    return sorted(set(os.listdir(parent)) - set(keep))


def hf_load(arch, path):
    model, info = getattr(transformers, arch).from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def hf_outputs(model, inputs):
    with torch.no_grad():
        return [t for t in model(**inputs).to_tuple() if isinstance(t, torch.Tensor)]


# --------------------------------------------------------------------------- every class
@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trips_bit_exact_and_transformers_loads_them(arch, tmp_path):
    model = random_hf_model(arch, hf_cfg_for(arch), seed=11)
    model.save_pretrained(tmp_path / "src")  # HF's own file is the source
    original = tensors(tmp_path / "src")

    assert run(tmp_path / "src", tmp_path / "h5", "--to", "tf-h5", "--quiet") == 0
    companions = sorted(set(os.listdir(tmp_path / "src")) - {"model.safetensors"})  # config (+ generation config)
    assert sorted(os.listdir(tmp_path / "h5")) == sorted(companions + ["tf_model.h5"])
    assert run(tmp_path / "h5", tmp_path / "h5-st", "--to", "safetensors", "--quiet") == 0
    assert run(tmp_path / "src", tmp_path / "bin", "--to", "pt-bin", "--quiet") == 0
    assert run(tmp_path / "bin", tmp_path / "bin-st", "--to", "safetensors", "--quiet") == 0
    for out in ("h5-st", "bin-st"):
        assert_bit_exact(tensors(tmp_path / out), original)
        assert (tmp_path / out / "config.json").read_bytes() == (tmp_path / "src" / "config.json").read_bytes()
    assert leftovers(tmp_path, []) == ["bin", "bin-st", "h5", "h5-st", "src"]

    inputs = inputs_for(arch)
    want = hf_outputs(hf_load(arch, tmp_path / "src"), inputs)
    assert want
    for out in ("h5-st", "bin-st", "bin"):
        got = hf_outputs(hf_load(arch, tmp_path / out), inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert torch.equal(g, w), out


def test_every_class_is_covered():
    assert len(ARCHITECTURES) == 15


# --------------------------------------------------------------------------- HF TF loads our h5
@pytest.mark.parametrize("arch", sorted(a for a, f in ARCHITECTURES.items() if f == "vision"))
def test_transformers_tf_loads_converted_h5(arch, tmp_path):
    cfg = hf_cfg("vision")
    assert cfg.use_mean_pooling
    pt_model = random_hf_model(arch, cfg, seed=5)
    pt_model.save_pretrained(tmp_path / "src")
    assert run(tmp_path / "src", tmp_path / "h5", "--to", "tf-h5", "--quiet") == 0

    tf_model, info = getattr(transformers, "TF" + arch).from_pretrained(tmp_path / "h5", output_loading_info=True)
    # Weightless layers are named by Keras' global counters; HF's TF segmentation builds its
    # auxiliary convs lazily and reports their entries unused even when loading its own files.
    assert all(k.startswith(("activation", "max_pooling2d")) for k in info["missing_keys"]), info
    assert all(k.startswith(("activation", "max_pooling2d", "auxiliary_head/convs."))
               for k in info["unexpected_keys"]), info
    assert not info["mismatched_keys"]
    spec = weight_spec(d2v_config(cfg), arch)
    arrays = tensors(tmp_path / "src")
    loaded = {w.name.split("/", 1)[1]: w.numpy() for w in tf_model.weights}
    assert loaded
    for name, value in loaded.items():
        p = layouts.h5_names(spec)[name]
        assert np.array_equal(value, layouts.to_keras_array(p, spec.tie(dict(arrays))[p.name])), name

    if arch == "Data2VecVisionForSemanticSegmentation":
        return  # HF's TF pyramid pooling is wrong (REFERENCE.md): its logits are not comparable
    pixels = inputs_for(arch)["pixel_values"]
    with torch.no_grad():
        want = pt_model(pixel_values=pixels)
    got = tf_model(pixel_values=pixels.numpy(), training=False)
    key = "last_hidden_state" if arch == "Data2VecVisionModel" else "logits"
    diff = np.abs(got[key].numpy() - want[key].numpy()).max()
    assert diff <= 1e-5, diff


def test_hf_tf_h5_converts_to_safetensors(tmp_path, capsys):
    """A tf_model.h5 written by transformers itself (no BatchNorm counters) converts cleanly."""
    cfg = hf_cfg("vision")
    arch = "Data2VecVisionForSemanticSegmentation"
    tf_model = transformers.TFData2VecVisionForSemanticSegmentation(cfg)
    tf_model(tf_model.dummy_inputs)
    tf_model.save_pretrained(tmp_path / "tf")
    assert run(tmp_path / "tf", tmp_path / "st", "--to", "safetensors") == 0
    assert "num_batches_tracked" in capsys.readouterr().out
    spec = weight_spec(d2v_config(cfg), arch)
    from_h5, unexpected = checkpoint.read_tf_h5(str(tmp_path / "tf" / "tf_model.h5"), spec)
    assert not unexpected
    got = tensors(tmp_path / "st")
    assert set(got) == {p.name for p in spec.stored()}
    for name, value in got.items():
        if name.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == () and value == 0
        else:
            assert value.tobytes() == np.asarray(from_h5[name]).tobytes(), name
    hf_load(arch, tmp_path / "st")


# --------------------------------------------------------------------------- dtypes and sources
def _d2v_checkpoint(path, arch="Data2VecVisionForImageClassification", config=None, arrays=None, fmt="safetensors"):
    config = config or d2v_config(hf_cfg("vision"))
    spec = weight_spec(config, arch)
    arrays = spec.random_arrays(0) if arrays is None else arrays
    checkpoint.write_checkpoint(path, arrays, spec, [fmt])
    config.architectures = [arch]
    config.save_pretrained(path)
    return spec, arrays


def test_float16_kept_bit_exact(tmp_path):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    half = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in arrays.items()}
    save_file(half, str(tmp_path / "src" / "model.safetensors"))
    assert run(tmp_path / "src", tmp_path / "h5", "--to", "tf-h5", "--quiet") == 0
    assert run(tmp_path / "h5", tmp_path / "back", "--to", "safetensors", "--quiet") == 0
    assert run(tmp_path / "back", tmp_path / "bin", "--to", "pt-bin", "--quiet") == 0
    assert run(tmp_path / "bin", tmp_path / "back2", "--to", "safetensors", "--quiet") == 0
    assert_bit_exact(tensors(tmp_path / "back"), half)
    assert_bit_exact(tensors(tmp_path / "back2"), half)


def test_bfloat16_bin_is_upcast_with_a_note(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src", fmt="pt-bin")
    os.remove(tmp_path / "src" / "pytorch_model.bin")
    state = {k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
             for k, v in arrays.items()}
    torch.save(state, tmp_path / "src" / "pytorch_model.bin")
    assert run(tmp_path / "src", tmp_path / "st", "--to", "safetensors") == 0
    assert "bfloat16" in capsys.readouterr().out
    got = tensors(tmp_path / "st")
    for name, t in state.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name


def test_from_picks_the_source(tmp_path, capsys):
    spec, a = _d2v_checkpoint(tmp_path / "src")
    b = spec.random_arrays(1)
    checkpoint.write_checkpoint(tmp_path / "other", b, spec, ["tf-h5"])
    os.rename(tmp_path / "other" / "tf_model.h5", tmp_path / "src" / "tf_model.h5")
    os.rmdir(tmp_path / "other")
    assert run(tmp_path / "src", tmp_path / "default", "--to", "safetensors", "--quiet") == 0
    assert run(tmp_path / "src", tmp_path / "h5", "--to", "safetensors", "--from", "tf-h5", "--quiet") == 0
    assert_bit_exact(tensors(tmp_path / "default"), a)
    assert_bit_exact(tensors(tmp_path / "h5"), b)
    assert run(tmp_path / "src", tmp_path / "bin", "--to", "safetensors", "--from", "pt-bin") == 2
    assert "no pt-bin weights" in capsys.readouterr().err
    assert not (tmp_path / "bin").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pt-bin"])
def test_sharded_source_and_companion_files(fmt, tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    src = tmp_path / "src"
    os.remove(src / "model.safetensors")
    names = list(arrays)
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    shards = {n: f"{stem}-0000{1 + (i % 2)}-of-00002.{ext}" for i, n in enumerate(names)}
    for shard in set(shards.values()):
        part = {n: arrays[n] for n in names if shards[n] == shard}
        if fmt == "safetensors":
            save_file(part, str(src / shard))
        else:
            torch.save({n: torch.from_numpy(a) for n, a in part.items()}, src / shard)
    (src / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    (src / "preprocessor_config.json").write_text('{"do_resize": true}')
    (src / "README.md").write_text("card")
    (src / "flax_model.msgpack").write_bytes(b"\x00")
    (src / "runs").mkdir()
    to = "pt-bin" if fmt == "safetensors" else "safetensors"
    assert run(src, tmp_path / "out", "--to", to) == 0
    assert "runs/" in capsys.readouterr().out
    weights = "pytorch_model.bin" if to == "pt-bin" else "model.safetensors"
    assert sorted(os.listdir(tmp_path / "out")) == sorted(["README.md", "config.json", "preprocessor_config.json",
                                                           weights])
    assert (tmp_path / "out" / "preprocessor_config.json").read_text() == '{"do_resize": true}'
    back, _, _ = checkpoint.read_checkpoint(tmp_path / "out")
    assert_bit_exact(back, arrays)


def test_unreadable_source_exits_2(tmp_path, capsys):
    _d2v_checkpoint(tmp_path / "src")
    (tmp_path / "src" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _expect_refusal(tmp_path, capsys, "model.safetensors", code=2)
    os.remove(tmp_path / "src" / "model.safetensors")
    _expect_refusal(tmp_path, capsys, "no weights", code=2)
    os.remove(tmp_path / "src" / "config.json")
    _expect_refusal(tmp_path, capsys, "config.json", code=2)
    assert run(tmp_path / "nowhere", tmp_path / "dst", "--to", "tf-h5") == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("pooler", [True, False])
def test_base_model_with_or_without_pooler(pooler, tmp_path):
    cfg = hf_cfg("text")
    model = transformers.Data2VecTextModel(cfg, add_pooling_layer=pooler)
    model.save_pretrained(tmp_path / "src")
    original = tensors(tmp_path / "src")
    assert any(k.startswith("pooler.") for k in original) == pooler
    assert run(tmp_path / "src", tmp_path / "h5", "--to", "tf-h5", "--quiet") == 0
    assert run(tmp_path / "h5", tmp_path / "st", "--to", "safetensors", "--quiet") == 0
    assert_bit_exact(tensors(tmp_path / "st"), original)


# --------------------------------------------------------------------------- strictness
def _expect_refusal(tmp_path, capsys, pattern, code=1, args=()):
    rc = run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5", *args)
    err = capsys.readouterr().err
    assert rc == code, err
    assert pattern in err, err
    assert leftovers(tmp_path, ["src"]) == []
    return err


def test_unexpected_tensor_exits_1(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    save_file({**arrays, "extra.weight": np.ones(3, np.float32)}, str(tmp_path / "src" / "model.safetensors"))
    err = _expect_refusal(tmp_path, capsys, "extra.weight")
    assert "unexpected" in err and "nothing written" in err


def test_missing_head_tensor_exits_1(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    del arrays["classifier.bias"]
    save_file(arrays, str(tmp_path / "src" / "model.safetensors"))
    err = _expect_refusal(tmp_path, capsys, "classifier.bias")
    assert "missing" in err


def test_missing_backbone_tensor_exits_1(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    del arrays["data2vec_vision.encoder.layer.1.output.dense.weight"]
    save_file(arrays, str(tmp_path / "src" / "model.safetensors"))
    _expect_refusal(tmp_path, capsys, "data2vec_vision.encoder.layer.1.output.dense.weight")


def test_shape_mismatch_exits_1(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    arrays["classifier.weight"] = np.zeros((5, 32), np.float32)
    arrays["classifier.bias"] = np.zeros((5,), np.float32)
    save_file(arrays, str(tmp_path / "src" / "model.safetensors"))
    err = _expect_refusal(tmp_path, capsys, "classifier.weight checkpoint (5, 32) vs model (3, 32)")
    assert "classifier.bias" in err


def test_base_prefix_rename_exits_1(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src", arch="Data2VecVisionModel")
    save_file({"data2vec_vision." + k: v for k, v in arrays.items()}, str(tmp_path / "src" / "model.safetensors"))
    _expect_refusal(tmp_path, capsys, "prefix")


def test_tied_copy_with_other_values_exits_1(tmp_path, capsys):
    cfg = Data2VecTextConfig(**TEXT)
    spec, arrays = _d2v_checkpoint(tmp_path / "src", "Data2VecTextForMaskedLM", cfg, fmt="pt-bin")
    state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    state["lm_head.decoder.weight"] += 1
    torch.save(state, tmp_path / "src" / "pytorch_model.bin")
    _expect_refusal(tmp_path, capsys, "lm_head.decoder.weight should be a copy")


# --------------------------------------------------------------------------- architecture
def test_architecture_from_option_or_config(tmp_path, capsys):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    cfg_path = tmp_path / "src" / "config.json"
    data = json.loads(cfg_path.read_text())
    del data["architectures"]
    cfg_path.write_text(json.dumps(data))
    err = _expect_refusal(tmp_path, capsys, "--architecture", code=2)
    assert "names no architecture" in err
    _expect_refusal(tmp_path, capsys, "unknown architecture 'Data2VecVisionForNothing'", code=2,
                    args=("--architecture", "Data2VecVisionForNothing"))
    _expect_refusal(tmp_path, capsys, "is a text model", code=2, args=("--architecture", "Data2VecTextModel"))
    assert run(tmp_path / "src", tmp_path / "a", "--to", "tf-h5", "--quiet",
               "--architecture", "TFData2VecVisionForImageClassification") == 0
    data["architectures"] = ["TFData2VecVisionForImageClassification"]  # as HF's TF classes write it
    cfg_path.write_text(json.dumps(data))
    assert run(tmp_path / "src", tmp_path / "b", "--to", "tf-h5", "--quiet") == 0
    for out in ("a", "b"):
        back, _, _ = checkpoint.read_checkpoint(tmp_path / out, spec)
        assert_bit_exact(back, arrays)


# --------------------------------------------------------------------------- destination
def test_refuses_to_overwrite(tmp_path, capsys):
    _d2v_checkpoint(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]
    assert leftovers(tmp_path, ["src", "dst"]) == []


def test_overwrite_replaces_the_whole_directory(tmp_path):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "stale.safetensors").write_text("old")
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5", "--overwrite", "--quiet") == 0
    assert sorted(os.listdir(tmp_path / "dst")) == ["config.json", "tf_model.h5"]
    assert leftovers(tmp_path, ["src", "dst"]) == []
    back, _, _ = checkpoint.read_checkpoint(tmp_path / "dst", spec)
    assert_bit_exact(back, arrays)


def test_refuses_source_as_destination(tmp_path, capsys):
    _d2v_checkpoint(tmp_path / "src")
    before = sorted(os.listdir(tmp_path / "src"))
    for dst in (tmp_path / "src", tmp_path / "src" / "inner", tmp_path):
        assert run(tmp_path / "src", dst, "--to", "tf-h5", "--overwrite") == 2
        assert "separate directories" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "src")) == before


def _fail_after(count, real):
    """``real`` that raises "disk full" on its ``count``-th call (a torn file is left behind)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) >= count:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


def test_failure_mid_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    _d2v_checkpoint(tmp_path / "src")
    # Fail inside the h5 writer after some datasets are on disk (independent of how
    # d2v_common.checkpoints.formats splits its writers into functions).
    monkeypatch.setattr(h5py.Group, "create_dataset", _fail_after(5, h5py.Group.create_dataset))
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5") == 2
    assert "No space left" in capsys.readouterr().err
    assert leftovers(tmp_path, ["src"]) == []
    # With --overwrite the old destination survives a failed write untouched.
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5", "--overwrite") == 2
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]
    assert leftovers(tmp_path, ["src", "dst"]) == []


def test_failure_in_pt_bin_writer_leaves_nothing(tmp_path, capsys, monkeypatch):
    _d2v_checkpoint(tmp_path / "src")

    def torn_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a pickle")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", torn_save)
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "pt-bin") == 2
    assert "interrupted" in capsys.readouterr().err
    assert leftovers(tmp_path, ["src"]) == []


def test_failed_swap_restores_the_old_destination(tmp_path, capsys, monkeypatch):
    _d2v_checkpoint(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    real_rename = os.rename

    def rename(a, b):
        if os.path.basename(str(a)).startswith("dst.tmp-"):
            raise OSError(5, "I/O error")
        return real_rename(a, b)

    monkeypatch.setattr(convert.os, "rename", rename)
    assert run(tmp_path / "src", tmp_path / "dst", "--to", "tf-h5", "--overwrite") == 2
    assert "I/O error" in capsys.readouterr().err
    assert os.listdir(tmp_path / "dst") == ["keep.txt"]
    assert leftovers(tmp_path, ["src", "dst"]) == []


# --------------------------------------------------------------------------- command line
def test_progress_quiet_and_fallback_counter(tmp_path, capsys, monkeypatch):
    _d2v_checkpoint(tmp_path / "src")
    assert run(tmp_path / "src", tmp_path / "q", "--to", "tf-h5", "--quiet") == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert run(tmp_path / "src", tmp_path / "small", "--to", "tf-h5") == 0
    out, err = capsys.readouterr()
    assert "all tensors matched" in out and err == ""  # small: no bar unless asked
    assert run(tmp_path / "src", tmp_path / "bar", "--to", "tf-h5", "--progress") == 0
    assert "writing tf-h5" in capsys.readouterr().err  # tqdm's bar
    monkeypatch.setattr(convert, "PROGRESS_THRESHOLD_BYTES", 1000)  # "large": the bar comes unasked
    assert run(tmp_path / "src", tmp_path / "large", "--to", "tf-h5") == 0
    assert "writing tf-h5" in capsys.readouterr().err
    monkeypatch.setattr(convert, "_load_tqdm", lambda: None)
    assert run(tmp_path / "src", tmp_path / "plain", "--to", "tf-h5", "--progress") == 0
    assert "100% of" in capsys.readouterr().err


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        convert.main(["--help"])
    assert e.value.code == 0
    assert "--to {safetensors,tf-h5,pt-bin}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        convert.main(["a", "b"])  # --to is required
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        convert.main(["a", "b", "--to", "onnx"])
    assert e.value.code == 2


def test_console_script_is_declared():
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "d2v-convert"]
    assert entry.load() is convert.main


def test_cli_in_a_subprocess_needs_no_framework(tmp_path):
    spec, arrays = _d2v_checkpoint(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "d2v_common.convert", str(tmp_path / "src"), str(tmp_path / "h5"),
                           "--to", "tf-h5"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all tensors matched" in proc.stdout and "tf_model.h5" in proc.stdout
    with h5py.File(tmp_path / "h5" / "tf_model.h5") as f:
        assert "layer_names" in f.attrs
    # safetensors <-> tf-h5 imports neither torch nor tensorflow.
    code = ("import sys; from d2v_common.convert import main; "
            f"rc = main([{str(tmp_path / 'h5')!r}, {str(tmp_path / 'st')!r}, '--to', 'safetensors', '--quiet']); "
            "assert rc == 0, rc; "
            "assert not {'torch', 'tensorflow', 'keras', 'transformers'} & set(sys.modules), 'framework imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_bit_exact(tensors(tmp_path / "st"), arrays)
    proc = subprocess.run([sys.executable, "-m", "d2v_common.convert", "--help"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0 and "d2v-convert" in proc.stdout
