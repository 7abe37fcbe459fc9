"""Sharded checkpoints (issue 30): ``save_pretrained(max_shard_size=...)`` writes HF's sharded
layout in both frameworks; HF and d2v load it back equal; a failed save leaves nothing behind."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

import d2v_tf
import d2v_torch
from crosscheck.cases import tiny
from d2v_common.checkpoints import formats as checkpoint
from d2v_common.configs import Data2VecTextConfig

ARCH = "Data2VecTextForMaskedLM"  # tied decoder: the index must leave the tied copy out, as HF does
CONFIG = Data2VecTextConfig(**tiny.TEXT)
SHARD = "20KB"


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _shards(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("model-"))


@pytest.fixture
def torch_model():
    torch.manual_seed(0)
    return getattr(d2v_torch, ARCH)(CONFIG)


def test_torch_and_keras_write_hfs_sharded_layout_that_hf_and_d2v_load(torch_model, tmp_path):
    torch_model.save_pretrained(tmp_path / "pt", max_shard_size=SHARD)
    shards = _shards(tmp_path / "pt")
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not os.path.exists(tmp_path / "pt" / "model.safetensors")
    index = json.loads((tmp_path / "pt" / "model.safetensors.index.json").read_text())
    stored = checkpoint.checkpoint_format("safetensors").stored_tensors(torch_model.state_arrays(), torch_model.spec)
    assert "lm_head.decoder.weight" not in stored  # tied copies stay out of the files and the index, as in HF
    assert set(index["weight_map"]) == set(stored) and sorted(set(index["weight_map"].values())) == shards
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in stored.values())
    assert all(os.path.getsize(tmp_path / "pt" / s) <= 20_000 + 4096 for s in shards[:-1])  # + header

    expected = torch_model.state_arrays()
    hf = getattr(transformers, ARCH).from_pretrained(tmp_path / "pt")  # the oracle reads the folder
    assert _same({k: v.detach().numpy() for k, v in hf.state_dict().items() if k in expected},
                 {k: v for k, v in expected.items() if k in hf.state_dict()})
    assert _same(getattr(d2v_torch, ARCH).from_pretrained(tmp_path / "pt").state_arrays(), expected)
    keras_model = getattr(d2v_tf, "TF" + ARCH).from_pretrained(tmp_path / "pt")
    assert _same(keras_model.state_arrays(), expected)

    keras_model.save_pretrained(tmp_path / "keras", max_shard_size=20_000)
    assert _shards(tmp_path / "keras") == shards
    assert _same(getattr(d2v_torch, ARCH).from_pretrained(tmp_path / "keras").state_arrays(), expected)


def test_resaving_with_fewer_shards_or_one_file_leaves_no_stale_shards(torch_model, tmp_path):
    torch_model.save_pretrained(tmp_path, max_shard_size="20KB")
    torch_model.save_pretrained(tmp_path, max_shard_size="60KB")
    count = len(_shards(tmp_path))
    assert all(s.endswith(f"-of-{count:05d}.safetensors") for s in _shards(tmp_path))
    torch_model.save_pretrained(tmp_path)  # HF's default 5GB: one file
    assert _shards(tmp_path) == [] and not os.path.exists(tmp_path / "model.safetensors.index.json")
    assert _same(getattr(d2v_torch, ARCH).from_pretrained(tmp_path).state_arrays(), torch_model.state_arrays())


def test_a_failed_sharded_save_leaves_the_previous_checkpoint(torch_model, tmp_path, monkeypatch):
    torch_model.save_pretrained(tmp_path)
    before = sorted(os.listdir(tmp_path))
    written = []

    def failing_dump(path, arrays):
        if written:
            raise OSError("disk full")
        written.append(path)
        real_dump(path, arrays)

    real_dump = checkpoint._dump_safetensors
    monkeypatch.setattr(checkpoint, "_dump_safetensors", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        torch_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert sorted(os.listdir(tmp_path)) == before  # no shard, index or temporary file left
    monkeypatch.undo()
    assert _same(getattr(d2v_torch, ARCH).from_pretrained(tmp_path).state_arrays(), torch_model.state_arrays())


def test_max_shard_size_reads_hfs_size_strings():
    assert checkpoint.parse_size("500MB") == 500 * 10**6
    assert checkpoint.parse_size("2GB") == 2 * 10**9
    assert checkpoint.parse_size("2GiB") == 2 * 2**30
    assert checkpoint.parse_size(1234) == 1234
    for bad in ("2 parsecs", 0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_shard_size"):
            checkpoint.parse_size(bad)
