"""Hostile or broken files and interrupted saves (issue 10, file side)."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

import d2v_tf
import d2v_torch
from d2v_common import io_utils
from d2v_common.checkpoints import formats as checkpoint
from d2v_common.configs import Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import weight_spec
from crosscheck.cases import tiny

VISION = dict(tiny.VISION, num_hidden_layers=2, image_size=16, out_indices=[1, 2, 3, 3], num_labels=3)
ARCH = "Data2VecVisionForSemanticSegmentation"
FRAMEWORKS = {"torch": getattr(d2v_torch, ARCH), "tf": getattr(d2v_tf, "TF" + ARCH)}


@pytest.fixture
def saved(tmp_path):
    """A valid checkpoint directory and the arrays it holds."""
    torch.manual_seed(0)
    model = FRAMEWORKS["torch"](Data2VecVisionConfig(**VISION))
    model.save_pretrained(tmp_path)
    return tmp_path, model.state_arrays()


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- broken files
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_truncated_safetensors(saved, framework):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        FRAMEWORKS[framework].from_pretrained(path)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_garbage_safetensors(saved, framework):
    path, _ = saved
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="model.safetensors"):
        FRAMEWORKS[framework].from_pretrained(path)


def test_safetensors_header_lies_about_shape(saved):
    path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**6, 10**6]
    blob = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(data[8 + n :]))
    with pytest.raises(ValueError):
        checkpoint.read_checkpoint(path)


def _h5_copy_with(path, mutate):
    spec = weight_spec(Data2VecVisionConfig(**VISION), ARCH)
    checkpoint.write_checkpoint(path, spec.random_arrays(0), spec, ["tf-h5"])
    with h5py.File(path / "tf_model.h5", "a") as f:
        mutate(f)
    return spec


def test_h5_external_link_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.zeros((1, 1, 32), np.float32)

    def mutate(f):
        group = f["data2vec_vision"]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        group[name] = h5py.ExternalLink(str(other), "secret")

    spec = _h5_copy_with(tmp_path, mutate)
    with pytest.raises(checkpoint.CheckpointError, match="ExternalLink"):
        checkpoint.read_tf_h5(str(tmp_path / "tf_model.h5"), spec)


def test_h5_absurd_shape_refused(tmp_path):
    def mutate(f):
        group = f["data2vec_vision"]
        name = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]][0]
        del group[name]
        # chunked and never written: a tiny file claiming 2**40 elements
        group.create_dataset(name, shape=(2**20, 2**20), dtype="f4", chunks=(1, 1024))

    spec = _h5_copy_with(tmp_path, mutate)
    with pytest.raises(checkpoint.CheckpointError, match="absurd"):
        checkpoint.read_tf_h5(str(tmp_path / "tf_model.h5"), spec)


def test_not_an_h5_file(tmp_path):
    (tmp_path / "tf_model.h5").write_bytes(b"not hdf5 at all")
    Data2VecVisionConfig(**VISION).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="HDF5"):
        FRAMEWORKS["torch"].from_pretrained(tmp_path)


def test_unsafe_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    Data2VecVisionConfig(**VISION).save_pretrained(tmp_path)
    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused"):
        FRAMEWORKS["torch"].from_pretrained(tmp_path)


def test_old_torch_refused_for_bin(saved, monkeypatch):
    path, arrays = saved
    spec = weight_spec(Data2VecVisionConfig(**VISION), ARCH)
    checkpoint.write_checkpoint(path, arrays, spec, ["pt-bin"])
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ValueError, match="2.6"):
        checkpoint.read_checkpoint(path)


def test_checkpoint_of_another_architecture(tmp_path):
    Data2VecTextConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                       intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        FRAMEWORKS["tf"].from_pretrained(tmp_path)
    # right config, wrong weights: a clear error naming tensors, nothing half-loaded
    cfg = Data2VecVisionConfig(**VISION)
    cfg.save_pretrained(tmp_path)
    text_spec = weight_spec(Data2VecTextConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=4, intermediate_size=8), "Data2VecTextModel")
    checkpoint.write_checkpoint(tmp_path, text_spec.random_arrays(0), text_spec)
    with pytest.raises(ValueError, match="backbone tensor|model expects"):
        FRAMEWORKS["torch"].from_pretrained(tmp_path)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_config_with_wrong_types(saved, framework):
    path, _ = saved
    data = json.loads((path / "config.json").read_text())
    data["num_hidden_layers"] = "2"
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(TypeError, match="num_hidden_layers"):
        FRAMEWORKS[framework].from_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        FRAMEWORKS[framework].from_pretrained(path)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_check_finite_rejects_nan_by_name(saved, framework):
    path, arrays = saved
    arrays = dict(arrays)
    name = "decode_head.fpn_bottleneck.conv.weight"
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.inf
    spec = weight_spec(Data2VecVisionConfig(**VISION), ARCH)
    checkpoint.write_checkpoint(path, arrays, spec)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        FRAMEWORKS[framework].from_pretrained(path, check_finite=True)


# ---------------------------------------------------------------------- interrupted saves
class Boom(RuntimeError):
    pass


def _fail_on_call(n, real):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Boom(f"injected failure at call {n}")
        return real(*args, **kwargs)

    return wrapper


def _half_then_fail(path, *args, **kwargs):
    with open(path, "wb") as f:
        f.write(b"partial")
    raise Boom("injected failure mid-write")


INJECTIONS = {
    "mid-safetensors": ("_dump_safetensors", None),
    "mid-h5": ("_dump_tf_h5", None),
    "mid-config": ("_write_bytes", None),
    "first-rename": ("os.replace", 1),
    "second-rename": ("os.replace", 2),
    "last-rename": ("os.replace", 3),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
@pytest.mark.parametrize("where", list(INJECTIONS))
def test_interrupted_save_keeps_previous_checkpoint(saved, framework, where, monkeypatch):
    path, before = saved
    before_files = sorted(os.listdir(path))
    config = Data2VecVisionConfig(**{**VISION, "num_labels": 3})
    model = FRAMEWORKS[framework](config)  # different random weights
    target, nth = INJECTIONS[where]
    if target == "os.replace":
        monkeypatch.setattr(io_utils.os, "replace", _fail_on_call(nth, os.replace))
    else:
        monkeypatch.setattr(checkpoint, target, _half_then_fail)
    with pytest.raises(Boom):
        model.save_pretrained(path, tf_h5=True)
    monkeypatch.undo()
    assert sorted(os.listdir(path)) == before_files  # no temp files, nothing new
    reloaded = FRAMEWORKS["torch"].from_pretrained(path)
    assert _same(reloaded.state_arrays(), before)


def test_successful_save_then_load_is_exact(saved):
    path, _ = saved
    model = FRAMEWORKS["tf"](Data2VecVisionConfig(**VISION))
    model.save_pretrained(path, tf_h5=True)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tf_model.h5"]
    for fmt in ("safetensors", "tf-h5"):
        back = FRAMEWORKS["torch"].from_pretrained(path, checkpoint_format=fmt)
        assert _same(back.state_arrays(), model.state_arrays())
