"""Foundation acceptance: the weight spec equals HF's state dicts and h5 names, and every
checkpoint format HF writes reads back bit-exactly."""

import os

import h5py
import numpy as np
import pytest
import torch
import transformers

from d2v_common.checkpoints import formats as checkpoint

from d2v_common.spec import layouts
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.loader.matching import match_checkpoint
from d2v_common.spec import HF_ARCHITECTURES as ARCHITECTURES  # HF-parity classes (no data2vec 2.0)
from d2v_common.spec import weight_spec
from tests.oracle import d2v_config, random_hf_model, state_arrays
from crosscheck.cases import tiny

TEXT = dict(tiny.TEXT, vocab_size=50, num_labels=3)
AUDIO = dict(tiny.AUDIO_HEADS)
VISION = dict(tiny.VISION, num_labels=3)

VARIANTS = {
    "text": [dict(), dict(position_embedding_type="relative_key"),
             dict(position_embedding_type="relative_key_query", is_decoder=True, add_cross_attention=True),
             dict(tie_word_embeddings=False, type_vocab_size=1)],
    "audio": [dict(), dict(use_weighted_layer_sum=True, conv_bias=True, mask_time_prob=0.0),
              dict(add_adapter=True, output_hidden_size=24, num_adapter_layers=2)],
    "vision": [dict(), dict(use_relative_position_bias=True, use_mask_token=True, use_absolute_position_embeddings=True),
               dict(use_shared_relative_position_bias=True, use_mean_pooling=False, layer_scale_init_value=0.0),
               dict(auxiliary_concat_input=True, auxiliary_num_convs=2), dict(use_auxiliary_head=False, image_size=[32, 48])],
}
BASES = {"text": (TEXT, transformers.Data2VecTextConfig), "audio": (AUDIO, transformers.Data2VecAudioConfig),
         "vision": (VISION, transformers.Data2VecVisionConfig)}


def _hf_cfg(family, extra):
    base, cls = BASES[family]
    return cls(**{**base, **extra})


def _supported(arch, cfg):
    if "Audio" in arch and cfg.add_adapter and arch.endswith(("FrameClassification", "SequenceClassification", "XVector")):
        return False
    if arch == "Data2VecTextForMaskedLM" and cfg.is_decoder:
        return False
    if arch.startswith("Data2VecText") and cfg.add_cross_attention and arch != "Data2VecTextForCausalLM":
        return arch == "Data2VecTextModel"
    if arch == "Data2VecVisionForSemanticSegmentation" and isinstance(cfg.image_size, list):
        return True
    return True


CLASS_CASES = [
    (arch, family, i)
    for arch, family in ARCHITECTURES.items()
    for i, extra in enumerate(VARIANTS[family])
    if _supported(arch, _hf_cfg(family, extra))
]


@pytest.mark.parametrize("arch, family, variant", CLASS_CASES)
def test_spec_equals_hf_state_dict(arch, family, variant):
    hf_cfg = _hf_cfg(family, VARIANTS[family][variant])
    model = getattr(transformers, arch)(hf_cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    spec = weight_spec(d2v_config(hf_cfg), arch)
    assert spec.shapes() == expected
    assert list(spec.shapes()) == list(expected)  # same order too


def test_every_class_is_covered():
    assert {arch for arch, _, _ in CLASS_CASES} == set(ARCHITECTURES)
    assert len(ARCHITECTURES) == 15


@pytest.mark.parametrize("arch, family", [(a, f) for a, f in ARCHITECTURES.items()])
def test_hf_files_read_back_bit_exact(arch, family, tmp_path):
    hf_cfg = _hf_cfg(family, VARIANTS[family][-1] if family != "text" else VARIANTS[family][1])
    if not _supported(arch, hf_cfg):
        hf_cfg = _hf_cfg(family, {})
    model = random_hf_model(arch, hf_cfg, seed=3)
    expected = state_arrays(model)
    spec = weight_spec(d2v_config(hf_cfg), arch)
    model.save_pretrained(tmp_path / "st")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    for sub, fmt in (("st", "safetensors"), ("bin", "pt-bin")):
        arrays, unexpected, got_fmt = checkpoint.read_checkpoint(tmp_path / sub, spec)
        assert got_fmt == fmt and not unexpected
        matched, report = match_checkpoint(arrays, spec)
        assert report.clean, str(report)
        assert set(matched) == set(expected)
        for k, v in expected.items():
            assert matched[k].dtype == v.dtype and np.array_equal(matched[k], v), k


VISION_TF = ["TFData2VecVisionModel", "TFData2VecVisionForImageClassification", "TFData2VecVisionForSemanticSegmentation"]


@pytest.mark.parametrize("variant", [0, 1, 3])
@pytest.mark.parametrize("tf_arch", VISION_TF)
def test_hf_tf_h5_names_and_values(tf_arch, variant, tmp_path):
    """Every dataset HF's TF class writes maps to a spec entry with the same values."""
    hf_cfg = _hf_cfg("vision", VARIANTS["vision"][variant])
    tf_model = getattr(transformers, tf_arch)(hf_cfg)
    tf_model(tf_model.dummy_inputs)
    tf_model.save_pretrained(tmp_path)
    spec = weight_spec(d2v_config(hf_cfg), tf_arch)
    with h5py.File(tmp_path / "tf_model.h5") as f:
        hf_names = {}
        for group in f.attrs["layer_names"]:
            group = group.decode() if isinstance(group, bytes) else group
            for name in f[group].attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else name
                hf_names["/".join(name.split("/")[1:])] = np.asarray(f[group][name])
    ours = {n: p for n, p in layouts.h5_names(spec).items() if layouts.leaf_rule(p).in_hf_h5}
    assert set(ours) == set(hf_names)
    for name, p in ours.items():
        assert hf_names[name].shape == layouts.keras_shape(p), name
    arrays, unexpected = checkpoint.read_tf_h5(str(tmp_path / "tf_model.h5"), spec)
    assert not unexpected
    for name, p in ours.items():
        assert np.array_equal(layouts.to_keras_array(p, arrays[p.name]), hf_names[name])


@pytest.mark.parametrize("arch", ["Data2VecVisionForSemanticSegmentation", "Data2VecTextForMaskedLM",
                                  "Data2VecAudioForXVector"])
def test_write_read_round_trip_all_formats(arch, tmp_path):
    family = ARCHITECTURES[arch]
    cfg = d2v_config(_hf_cfg(family, {}))
    spec = weight_spec(cfg, arch)
    arrays = spec.random_arrays(5)
    checkpoint.write_checkpoint(tmp_path / "a", arrays, spec, ["safetensors", "pt-bin", "tf-h5"])
    for fmt in ("safetensors", "pt-bin", "tf-h5"):
        back, unexpected, _ = checkpoint.read_checkpoint(tmp_path / "a", spec, prefer=fmt)
        back = spec.tie(back)
        assert not unexpected
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v), (fmt, k)


def test_d2v_h5_loads_into_hf_tf(tmp_path):
    """HF's TF class reads d2v's tf_model.h5 (no missing or unexpected weights)."""
    hf_cfg = _hf_cfg("vision", VARIANTS["vision"][1])
    arch = "Data2VecVisionForSemanticSegmentation"
    spec = weight_spec(d2v_config(hf_cfg), arch)
    arrays = spec.random_arrays(1)
    checkpoint.write_checkpoint(tmp_path, arrays, spec, ["tf-h5"])
    hf_cfg.save_pretrained(tmp_path)
    tf_model, info = transformers.TFData2VecVisionForSemanticSegmentation.from_pretrained(
        tmp_path, output_loading_info=True
    )
    # Only weightless layers (named by Keras' global counters) may differ. HF's TF class builds
    # its auxiliary convs lazily, so it reports their h5 entries unused even for its own files.
    assert all(k.startswith(("activation", "max_pooling2d")) for k in info["missing_keys"])
    assert all(k.startswith(("activation", "max_pooling2d", "auxiliary_head/convs.")) for k in info["unexpected_keys"])
    assert not info["mismatched_keys"]
    weights = {w.name.split("/", 1)[1]: w.numpy() for w in tf_model.weights}
    compared = 0
    for name, p in layouts.h5_names(spec).items():
        if layouts.leaf_rule(p).in_hf_h5 and name in weights:
            assert np.array_equal(weights[name], layouts.to_keras_array(p, arrays[p.name])), name
            compared += 1
    assert compared == len(weights)


def test_sharded_safetensors(tmp_path):
    import json

    from safetensors.numpy import save_file

    spec = weight_spec(Data2VecVisionConfig(**VISION), "Data2VecVisionModel")
    arrays = spec.random_arrays(0)
    names = list(arrays)
    half = len(names) // 2
    save_file({n: arrays[n] for n in names[:half]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({n: arrays[n] for n in names[half:]}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {n: f"model-0000{1 if i < half else 2}-of-00002.safetensors"
                                            for i, n in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    back, _, fmt = checkpoint.read_checkpoint(tmp_path)
    assert fmt == "safetensors" and all(np.array_equal(back[n], arrays[n]) for n in names)


def test_safetensors_preferred_over_bin(tmp_path):
    spec = weight_spec(Data2VecVisionConfig(**VISION), "Data2VecVisionModel")
    a, b = spec.random_arrays(0), spec.random_arrays(1)
    checkpoint.write_safetensors(tmp_path / "model.safetensors", a)
    checkpoint.write_pytorch_bin(tmp_path / "pytorch_model.bin", b)
    back, _, fmt = checkpoint.read_checkpoint(tmp_path)
    assert fmt == "safetensors"
    assert all(np.array_equal(back[k], a[k]) for k in a)


def test_a_save_removes_stale_weight_files(tmp_path):
    """What loads is what was saved: a .bin save must not leave an older safetensors behind."""
    spec = weight_spec(Data2VecVisionConfig(**VISION), "Data2VecVisionModel")
    a, b = spec.random_arrays(0), spec.random_arrays(1)
    checkpoint.write_checkpoint(tmp_path, a, spec, ["safetensors", "tf-h5"])
    checkpoint.write_checkpoint(tmp_path, b, spec, ["pt-bin"])
    assert sorted(os.listdir(tmp_path)) == ["pytorch_model.bin"]
    back, _, fmt = checkpoint.read_checkpoint(tmp_path)
    assert fmt == "pt-bin" and all(np.array_equal(back[k], b[k]) for k in b)


# ----------------------------------------------------------------------- load report
def _cfg():
    return Data2VecVisionConfig(**VISION)


def test_base_checkpoint_into_head_lists_new_head():
    cfg = _cfg()
    base = weight_spec(cfg, "Data2VecVisionModel").random_arrays(0)
    spec = weight_spec(cfg, "Data2VecVisionForImageClassification")
    with pytest.warns(UserWarning, match="newly initialized"):
        matched, report = match_checkpoint(base, spec)
    assert set(report.newly_initialized) == {"classifier.weight", "classifier.bias",
                                             "data2vec_vision.pooler.layernorm.weight",
                                             "data2vec_vision.pooler.layernorm.bias"}
    assert all(np.array_equal(matched["data2vec_vision." + k], v) for k, v in base.items())


def test_head_checkpoint_into_base_drops_head():
    cfg = _cfg()
    head = weight_spec(cfg, "Data2VecVisionForSemanticSegmentation").random_arrays(0)
    spec = weight_spec(cfg, "Data2VecVisionModel")
    with pytest.warns(UserWarning, match="not used"):
        matched, report = match_checkpoint(head, spec)
    assert set(matched) == set(spec.names())
    assert "decode_head.classifier.weight" in report.unexpected
    assert not report.newly_initialized


def test_missing_backbone_and_mismatch_raise():
    cfg = _cfg()
    spec = weight_spec(cfg, "Data2VecVisionForImageClassification")
    arrays = spec.random_arrays(0)
    broken = dict(arrays)
    del broken["data2vec_vision.encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        match_checkpoint(broken, spec)
    other = weight_spec(Data2VecVisionConfig(**{**VISION, "num_labels": 5}), "Data2VecVisionForImageClassification")
    wrong = other.random_arrays(0)
    with pytest.raises(ValueError, match="classifier.weight"):
        match_checkpoint(wrong, spec)
    with pytest.warns(UserWarning):
        matched, report = match_checkpoint(wrong, spec, ignore_mismatched_sizes=True)
    assert {m[0] for m in report.mismatched} == {"classifier.weight", "classifier.bias"}


def test_tied_decoder_restored_when_omitted(tmp_path):
    cfg = Data2VecTextConfig(**TEXT)
    spec = weight_spec(cfg, "Data2VecTextForMaskedLM")
    arrays = spec.random_arrays(0)
    checkpoint.write_checkpoint(tmp_path, arrays, spec)
    stored, _, _ = checkpoint.read_checkpoint(tmp_path)
    assert "lm_head.decoder.weight" not in stored  # saved once
    matched, report = match_checkpoint(stored, spec)
    assert report.clean
    assert np.array_equal(matched["lm_head.decoder.weight"], arrays["data2vec_text.embeddings.word_embeddings.weight"])


def test_check_finite_names_the_tensor():
    spec = weight_spec(_cfg(), "Data2VecVisionModel")
    arrays = spec.random_arrays(0)
    arrays["encoder.layer.0.output.dense.bias"] = arrays["encoder.layer.0.output.dense.bias"].copy()
    arrays["encoder.layer.0.output.dense.bias"][3] = np.nan
    match_checkpoint(arrays, spec)  # off by default
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.output\.dense\.bias"):
        match_checkpoint(arrays, spec, check_finite=True)


def test_no_temp_files_left(tmp_path):
    spec = weight_spec(_cfg(), "Data2VecVisionModel")
    checkpoint.write_checkpoint(tmp_path, spec.random_arrays(0), spec, ["safetensors", "tf-h5", "pt-bin"])
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "pytorch_model.bin", "tf_model.h5"]


def test_bin_needs_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.read_checkpoint(tmp_path)


def test_spec_audio_and_text_configs_validate():
    with pytest.raises(ValueError, match="adapter"):
        weight_spec(Data2VecAudioConfig(**AUDIO, add_adapter=True), "Data2VecAudioForXVector")
    with pytest.raises(ValueError, match="is_decoder"):
        weight_spec(Data2VecTextConfig(**TEXT, add_cross_attention=True), "Data2VecTextModel")


# ------------------------------------------------------------------ the format registry
def test_registry_drives_loader_writer_and_save_pretrained(tmp_path, monkeypatch):
    """A format registered once is found, read, written and offered by save_pretrained."""
    import d2v_torch

    def read_npz(path, spec):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}, []

    def write_npz(path, arrays, spec):
        with open(path, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})

    monkeypatch.setattr(checkpoint, "CHECKPOINT_FORMATS", dict(checkpoint.CHECKPOINT_FORMATS))
    checkpoint.register_checkpoint_format(
        checkpoint.CheckpointFormat(name="npz", file_name="weights.npz", read_file=read_npz, write_file=write_npz)
    )
    with pytest.raises(ValueError, match="already registered"):
        checkpoint.register_checkpoint_format(checkpoint.CHECKPOINT_FORMATS["npz"])
    model = d2v_torch.Data2VecVisionModel(Data2VecVisionConfig(**VISION))
    written = model.save_pretrained(tmp_path, formats=["npz"])
    assert sorted(os.listdir(tmp_path)) == ["config.json", "weights.npz"]
    assert [os.path.basename(p) for p in written] == ["weights.npz", "config.json"]
    back = d2v_torch.Data2VecVisionModel.from_pretrained(tmp_path, checkpoint_format="npz")
    for name, value in model.state_arrays().items():
        np.testing.assert_array_equal(back.state_arrays()[name], value)
    # a later save in another format removes the stale npz file
    model.save_pretrained(tmp_path, formats=["safetensors", "tf-h5"])
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "tf_model.h5"]


def test_save_pretrained_formats_and_flags(tmp_path):
    assert checkpoint.formats_from_flags() == ["safetensors"]
    assert checkpoint.formats_from_flags(safe_serialization=False, tf_h5=True) == ["pt-bin", "tf-h5"]
    assert checkpoint.formats_from_flags("tf-h5") == ["tf-h5"]
    with pytest.raises(ValueError, match="at least one"):
        checkpoint.formats_from_flags([])
    spec = weight_spec(_cfg(), "Data2VecVisionModel")
    with pytest.raises(ValueError, match=r"unknown checkpoint format 'onnx'; use safetensors, pt-bin, tf-h5"):
        checkpoint.write_checkpoint(tmp_path, spec.random_arrays(0), spec, ["onnx"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "listing, torch_available, prefer, expected",
    [
        (["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"], True, None,
         ["config.json", "model.safetensors"]),
        (["config.json", "pytorch_model.bin", "tf_model.h5", "README.md"], True, None,
         ["config.json", "pytorch_model.bin"]),
        (["config.json", "pytorch_model.bin", "tf_model.h5"], False, None, ["config.json", "tf_model.h5"]),
        (["config.json", "model.safetensors", "tf_model.h5"], True, "tf-h5", ["config.json", "tf_model.h5"]),
        (["config.json", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
          "model-00001-of-00002.safetensors", "pytorch_model-00001-of-00001.bin"], True, None,
         ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors"]),
    ],
)
def test_files_to_fetch(listing, torch_available, prefer, expected):
    assert checkpoint.files_to_fetch(listing, torch_available=torch_available, prefer=prefer) == expected


def test_files_to_fetch_refuses_what_cannot_load():
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoint.files_to_fetch(["model.safetensors"], torch_available=True)
    with pytest.raises(FileNotFoundError, match="expected one of model.safetensors"):
        checkpoint.files_to_fetch(["config.json", "pytorch_model.bin"], torch_available=False)
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        checkpoint.files_to_fetch(["config.json"], torch_available=True, prefer="gguf")


def test_format_of_file_knows_shards():
    assert checkpoint.format_of_file("model-00003-of-00010.safetensors").name == "safetensors"
    assert checkpoint.format_of_file("pytorch_model.bin.index.json").name == "pt-bin"
    assert checkpoint.format_of_file("tf_model.h5").name == "tf-h5"
    assert checkpoint.format_of_file("config.json") is None


def test_model_classes_name_their_architecture():
    import d2v_tf
    import d2v_torch
    from d2v_common import spec

    assert set(d2v_torch.MODEL_CLASSES) == set(spec.ARCHITECTURES) == set(d2v_tf.MODEL_CLASSES)
    for arch in spec.ARCHITECTURES:
        assert d2v_torch.model_class(arch).__name__ == arch == d2v_torch.model_class(arch).architecture
        assert d2v_tf.model_class(arch).__name__ == "TF" + arch
    with pytest.raises(ValueError, match="unknown architecture 'Data2VecFoo'"):
        d2v_tf.model_class("Data2VecFoo")

    class MyVisionModel(d2v_torch.Data2VecVisionModel):  # a user subclass keeps its parent's weights
        pass

    assert MyVisionModel(_cfg()).spec.architecture == "Data2VecVisionModel"
    with pytest.raises(TypeError, match="is not a Data2Vec architecture"):
        d2v_torch.Data2VecVisionPreTrainedModel(_cfg())
