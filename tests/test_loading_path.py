"""The one loading path (``d2v_common.loader.pretrained.load_pretrained``): each file is read once,
and a path that is not a checkpoint folder says what it is and what to pass instead."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
import safetensors
import torch

import d2v_torch
from d2v_common.checkpoints import formats as checkpoint
from d2v_common.checkpoints import fairseq
from d2v_common.loader import pretrained
from d2v_common.configs import Data2VecVisionConfig
from tests.fixture_paths import DATA2VEC2_DIR, DATA2VEC2_PRETRAINING_DIR
from tests.hubcache import folder_files, make_hub_cache, serve_offline



def _tiny_config() -> Data2VecVisionConfig:
    return Data2VecVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                image_size=32, patch_size=8, num_labels=3)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck") / "ck"
    torch.manual_seed(0)
    d2v_torch.Data2VecVisionForImageClassification(_tiny_config()).save_pretrained(folder)
    return folder


def _keras():
    import d2v_tf

    return d2v_tf


# ------------------------------------------------------------------------ read once
class _Reads:
    """Counts what a load opens: ``open`` per real path, safetensors headers, torch.load calls."""

    def __init__(self, monkeypatch):
        self.opens: dict[str, int] = {}
        self.headers: dict[str, int] = {}
        self.torch_loads: dict[str, int] = {}
        real_open, real_safe_open, real_torch_load = builtins.open, safetensors.safe_open, torch.load

        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                key = os.path.realpath(file)
                self.opens[key] = self.opens.get(key, 0) + 1
            return real_open(file, *args, **kwargs)

        def counting_safe_open(path, *args, **kwargs):
            key = os.path.realpath(path)
            self.headers[key] = self.headers.get(key, 0) + 1
            return real_safe_open(path, *args, **kwargs)

        def counting_torch_load(f, *args, **kwargs):
            key = os.path.realpath(f) if isinstance(f, (str, os.PathLike)) else repr(f)
            self.torch_loads[key] = self.torch_loads.get(key, 0) + 1
            return real_torch_load(f, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(safetensors, "safe_open", counting_safe_open)
        monkeypatch.setattr(torch, "load", counting_torch_load)

    def of(self, path) -> tuple[int, int, int]:
        key = os.path.realpath(path)
        return self.opens.get(key, 0), self.headers.get(key, 0), self.torch_loads.get(key, 0)


def test_a_hub_id_reads_config_and_weights_once(checkpoint_dir, tmp_path, monkeypatch):
    root = tmp_path / "hub"
    snapshot = make_hub_cache(root, "org/tiny-vision", folder_files(checkpoint_dir))
    serve_offline(monkeypatch, root)
    reads = _Reads(monkeypatch)
    model = d2v_torch.Data2VecVisionForImageClassification.from_pretrained("org/tiny-vision", cache_dir=root)
    assert model.load_report.clean and "(safetensors)" in model.load_report.source
    # one open of each file (the weights' header and every tensor read through it), one header read
    assert reads.of(snapshot / "config.json") == (1, 0, 0)
    assert reads.of(snapshot / "model.safetensors") == (1, 1, 0)
    want = checkpoint.read_safetensors(str(checkpoint_dir / "model.safetensors"))
    for name, array in model.state_arrays().items():
        if name in want:
            np.testing.assert_array_equal(array, np.asarray(want[name]))


def test_a_local_folder_in_keras_reads_each_file_once(checkpoint_dir, monkeypatch):
    d2v_tf = _keras()
    reads = _Reads(monkeypatch)
    model = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(checkpoint_dir)
    assert model.load_report.clean
    assert reads.of(checkpoint_dir / "config.json") == (1, 0, 0)
    assert reads.of(checkpoint_dir / "model.safetensors") == (1, 1, 0)


@pytest.mark.parametrize("positional_reads", [True, False])
def test_the_weights_handle_reads_every_tensor_and_closes_after_the_load(checkpoint_dir, monkeypatch,
                                                                         positional_reads):
    import gc

    if not positional_reads:  # the seek-and-read fallback of platforms without os.preadv
        monkeypatch.delattr(os, "preadv", raising=False)
    weights = str(checkpoint_dir / "model.safetensors")
    model = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(checkpoint_dir)
    gc.collect()
    open_files = [os.path.realpath(os.path.join("/proc/self/fd", fd)) for fd in os.listdir("/proc/self/fd")]
    assert os.path.realpath(weights) not in open_files
    want = checkpoint.read_safetensors(weights)
    for name, array in model.state_arrays().items():
        if name in want:
            np.testing.assert_array_equal(array, np.asarray(want[name]), err_msg=name)


def test_a_fairseq_checkpoint_is_read_and_converted_once(monkeypatch):
    path = os.path.join(DATA2VEC2_DIR, "image-cls", "checkpoint.pt")
    conversions = []
    real_convert = fairseq.convert_fairseq
    monkeypatch.setattr(fairseq, "convert_fairseq", lambda *a, **k: conversions.append(a) or real_convert(*a, **k))
    reads = _Reads(monkeypatch)
    model = d2v_torch.Data2Vec2VisionForImageClassification.from_pretrained(path)
    assert model.load_report.source.endswith("(fairseq)")
    assert len(conversions) == 1
    assert reads.of(path)[2] == 1  # one torch.load of the .pt
    assert reads.of(path)[0] <= 1  # and that is the only time the file is opened
    assert not hasattr(pretrained, "_FAIRSEQ_CACHE")  # nothing kept between calls


# ------------------------------------------------------------------------ data2vec 2.0 pretraining classes
PRETRAIN_IMAGE = os.path.join(DATA2VEC2_PRETRAINING_DIR, "pretrain-image", "checkpoint.pt")


def test_a_fairseq_pretraining_checkpoint_is_unpickled_once(monkeypatch):
    """Encoder, decoder and EMA teacher come from one read of the ``.pt``."""
    reads = _Reads(monkeypatch)
    model = d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained(PRETRAIN_IMAGE)
    assert reads.of(PRETRAIN_IMAGE)[2] == 1  # one torch.load
    assert reads.of(PRETRAIN_IMAGE)[0] <= 1  # and that is the only time the file is opened
    assert model.load_report.clean and model.load_report.source.endswith("(fairseq)")
    assert any(name.startswith("teacher.") for name in model.pretraining_arrays())


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain") / "saved"
    d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained(PRETRAIN_IMAGE).save_pretrained(folder)
    return folder


def test_a_saved_pretraining_folder_reads_each_file_once(pretraining_dir, monkeypatch):
    reads = _Reads(monkeypatch)
    model = d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained(pretraining_dir)
    assert model.load_report.clean and "(safetensors)" in model.load_report.source
    assert reads.of(pretraining_dir / "model.safetensors") == (1, 1, 0)
    assert reads.of(pretraining_dir / "config.json") == (1, 0, 0)
    assert reads.of(pretraining_dir / "d2v_pretraining.json") == (1, 0, 0)
    want = checkpoint.read_safetensors(str(pretraining_dir / "model.safetensors"))
    got = model.pretraining_arrays()
    assert set(got) == set(want)
    for name, array in got.items():
        np.testing.assert_array_equal(array, np.asarray(want[name]), err_msg=name)
    # its weight file, with config.json and d2v_pretraining.json beside it, names the same checkpoint
    from_file = d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained(pretraining_dir / "model.safetensors")
    for name, array in from_file.pretraining_arrays().items():
        np.testing.assert_array_equal(array, got[name], err_msg=name)


def test_a_pretraining_model_loads_from_a_hub_id(pretraining_dir, tmp_path, monkeypatch):
    root = tmp_path / "hub"
    make_hub_cache(root, "org/tiny-pretrain", folder_files(pretraining_dir))
    serve_offline(monkeypatch, root)
    model = d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained("org/tiny-pretrain", cache_dir=root)
    assert model.load_report.clean and model.fairseq_source is not None  # d2v_pretraining.json came along
    local = d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained(pretraining_dir)
    for name, array in local.pretraining_arrays().items():
        np.testing.assert_array_equal(model.pretraining_arrays()[name], array, err_msg=name)
    with pytest.raises(TypeError, match="unexpected keyword"):
        d2v_torch.Data2Vec2VisionForPreTraining.from_pretrained("org/tiny-pretrain", cache_dir=root, revison="main")


def test_a_model_load_keeps_no_unpickled_fairseq_checkpoint():
    opened = pretrained.open_checkpoint(PRETRAIN_IMAGE)
    assert opened.fairseq_checkpoint is None and opened.conversion_report.kind == "pretraining"


def test_load_pretrained_returns_config_arrays_and_report(checkpoint_dir):
    loaded = pretrained.load_pretrained(
        checkpoint_dir, pretrained.LoadOptions(), config_class=Data2VecVisionConfig,
        build=lambda config: d2v_torch.Data2VecVisionModel(config), seed=0,
    )
    assert isinstance(loaded.config, Data2VecVisionConfig) and loaded.config.num_hidden_layers == 2
    assert set(loaded.arrays) == set(loaded.model.spec.names())
    # a head checkpoint into its base model: the head tensors are reported as unused
    assert any(name.startswith("classifier") for name in loaded.report.unexpected)
    assert loaded.checkpoint.kind == "folder"


def test_every_source_kind_is_a_registry_entry():
    assert list(pretrained.CHECKPOINT_SOURCES) == ["fairseq", "weights-file", "folder", "hub"]
    with pytest.raises(ValueError, match="already registered"):
        pretrained.register_checkpoint_source(pretrained.CHECKPOINT_SOURCES["folder"])


def test_a_new_source_is_one_entry(checkpoint_dir, monkeypatch):
    """A made-up ``zoo:`` scheme that names local folders: one registered entry, and every
    from_pretrained takes it."""
    monkeypatch.setattr(pretrained, "CHECKPOINT_SOURCES", dict(pretrained.CHECKPOINT_SOURCES))
    folder = pretrained.CHECKPOINT_SOURCES["folder"]
    pretrained.register_checkpoint_source(pretrained.CheckpointSource(
        "zoo", lambda name: str(checkpoint_dir) if name == "zoo:tiny" else None, folder.open,
    ), before="fairseq")
    model = d2v_torch.Data2VecVisionForImageClassification.from_pretrained("zoo:tiny")
    assert model.load_report.clean


# ------------------------------------------------------------------------ issue 26 item 6: missing paths
@pytest.mark.parametrize("load", ["config", "torch"])
def test_a_missing_local_path_says_no_such_folder_or_hub_id(load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call = {"config": Data2VecVisionConfig.from_pretrained,
            "torch": d2v_torch.Data2VecVisionModel.from_pretrained}[load]
    for missing in ("./nothere", str(tmp_path / "nothere")):
        with pytest.raises(FileNotFoundError, match="no such folder or hub id") as err:
            call(missing)
        assert "config.json" not in str(err.value)


# ------------------------------------------------------------------------ issue 26 item 11: odd paths
def test_a_weight_file_with_its_config_beside_it_loads(checkpoint_dir):
    from_file = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(checkpoint_dir / "model.safetensors")
    from_folder = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(checkpoint_dir)
    assert from_file.load_report.clean
    for name, array in from_folder.state_arrays().items():
        np.testing.assert_array_equal(from_file.state_arrays()[name], array)


def test_a_weight_file_alone_says_to_pass_the_folder(checkpoint_dir, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((checkpoint_dir / "model.safetensors").read_bytes())
    with pytest.raises(OSError, match=r"model.safetensors.* is a weight file .*no config.json beside it: pass the "
                                      r"checkpoint folder"):
        d2v_torch.Data2VecVisionForImageClassification.from_pretrained(lone / "model.safetensors")
    # with the config given, the lone file is enough
    model = d2v_torch.Data2VecVisionForImageClassification.from_pretrained(
        lone / "model.safetensors", config=_tiny_config())
    assert model.load_report.clean
    # a config read from a weight file: a clear error, not a UnicodeDecodeError
    with pytest.raises(OSError, match="is not a config.json file .*pass the checkpoint folder"):
        Data2VecVisionConfig.from_pretrained(checkpoint_dir / "model.safetensors")


def test_a_symlink_loop_is_a_local_error_not_a_hub_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", "loop")  # a name that could be a hub id, but something is on disk
    for call in (Data2VecVisionConfig.from_pretrained, d2v_torch.Data2VecVisionModel.from_pretrained):
        with pytest.raises(OSError, match=r"'loop' is a symbolic link that loops") as err:
            call("loop")
        assert "Hub" not in str(err.value) and "network" not in str(err.value)


def test_a_self_linked_weight_file_is_named(checkpoint_dir, tmp_path):
    folder = tmp_path / "selflink"
    folder.mkdir()
    (folder / "config.json").write_bytes((checkpoint_dir / "config.json").read_bytes())
    os.symlink("model.safetensors", folder / "model.safetensors")
    with pytest.raises(OSError, match=r"model.safetensors' is a symbolic link that loops") as err:
        d2v_torch.Data2VecVisionForImageClassification.from_pretrained(folder)
    assert "no weights" not in str(err.value)
    with pytest.raises(OSError, match=r"is a symbolic link that loops"):
        d2v_torch.Data2VecVisionForImageClassification.from_pretrained(folder / "model.safetensors")


def test_a_shard_passed_alone_says_to_pass_the_folder(checkpoint_dir, tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes((checkpoint_dir / "model.safetensors").read_bytes())
    with pytest.raises(OSError, match="one shard of a sharded safetensors checkpoint: pass the folder"):
        d2v_torch.Data2VecVisionModel.from_pretrained(tmp_path / "model-00001-of-00002.safetensors")


# ------------------------------------------------- docs/extending.md, docs/architecture.md
PLACEHOLDERS = {"<family>": ("audio", "text", "vision"), "<backend>": ("tensorflow", "jax", "torch")}


@pytest.mark.parametrize("page, least_paths, least_names", [("extending.md", 10, 30), ("architecture.md", 15, 8)])
def test_docs_cite_only_files_and_names_that_exist(page, least_paths, least_names):
    """Every file path the page cites (in backticks, or any ``pkg/.../file.py`` in its text and
    pictures) exists (``<family>``, ``<backend>``: each of them), and every code name it cites in
    backticks is defined or used in the packages or tests."""
    import itertools
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", page), encoding="utf-8").read()
    sources = ""
    for package in ("d2v_common", "d2v_torch", "d2v_tf", "crosscheck", "tests"):
        for folder, _, names in os.walk(os.path.join(root, package)):
            sources += "".join(open(os.path.join(folder, n), encoding="utf-8").read() for n in names if n.endswith(".py"))
    cited = re.findall(r"`([^`\n]+)`", text)
    paths = {c for c in cited if re.fullmatch(r"[\w<>./-]+\.(py|md)", c)}
    paths |= set(re.findall(r"\b(?:d2v_common|d2v_torch|d2v_tf|crosscheck|docs|tests)/[\w<>/]*\.(?:py|md)\b", text))
    names = {m.group(1) for c in cited if (m := re.fullmatch(r"([A-Za-z_][\w.]*)(\(.*\))?", c))}
    assert len(paths) > least_paths and len(names) > least_names  # the scan found what the page cites
    folders = ("", "d2v_common", "d2v_torch", "d2v_tf")  # a bare name ("layers.py"): in some package

    def exists(path):
        keys = [k for k in PLACEHOLDERS if k in path]
        for values in itertools.product(*(PLACEHOLDERS[k] for k in keys)):
            filled = path
            for key, value in zip(keys, values):
                filled = filled.replace(key, value)
            if not any(os.path.exists(os.path.join(root, d, filled)) for d in folders):
                return False
        return True

    assert sorted(p for p in paths if not exists(p)) == []
    missing_names = sorted(n for n in names if not re.search(rf"\b{re.escape(n.split('.')[-1])}\b", sources))
    assert missing_names == []


def test_architecture_md_data_flow_names_exist():
    """The data-flow picture names functions as ``package.module.function`` under d2v_common:
    each of them imports."""
    import importlib
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "architecture.md"), encoding="utf-8").read()
    dotted = set(re.findall(r"\b(?:loader|checkpoints|models|spec|pretrain|export|convert)\.[a-z_]+(?:\.[a-z_]+)?\b", text))
    dotted -= {"convert.py", "export.py"}  # file names, not dotted paths
    assert len(dotted) >= 8
    missing = []
    for name in sorted(dotted):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                target = importlib.import_module("d2v_common." + ".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                target = getattr(target, attr, None)
            break
        else:
            target = None
        if target is None:
            missing.append(name)
    assert missing == []
