"""What the three preprocessors share: the output container, tensor conversion, config files.

Optional packages (torch, tensorflow, tokenizers, Pillow) are imported only inside the
functions that need them, so ``import d2v_common`` works with numpy alone.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
from typing import Any

import numpy as np

from d2v_common.checkpoints.hub import pop_hub_options, resolve_pretrained
from d2v_common.io_utils import atomic_write_bytes, read_json_object

RETURN_TENSORS = (None, "np", "pt", "tf")


def optional_import(module: str, extra: str = "processing"):
    """Import an optional dependency, or raise ImportError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise ImportError(f"this needs the optional package {top!r}: pip install 'd2v[{extra}]'") from err


def check_return_tensors(return_tensors: Any) -> None:
    if return_tensors not in RETURN_TENSORS:
        raise ValueError(f"return_tensors must be one of None, 'np', 'pt', 'tf'; got {return_tensors!r}")


def as_numpy(value: Any) -> np.ndarray:
    """A numpy array from an array-like: numpy, torch (any device, with grad), TensorFlow, nested lists."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch: leave the graph and the device first
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.generic):
        return np.asarray(value.numpy())
    return np.asarray(value)


def token_id_sequence(token_ids: Any) -> np.ndarray:
    """One sequence of integer token ids (list, numpy array, torch or TF tensor) as int64, 1-D."""
    ids = as_numpy(token_ids)
    if ids.ndim > 1:
        raise ValueError(f"decode takes one sequence, got shape {ids.shape}: use batch_decode")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids.reshape(-1).astype(np.int64)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def stack_or_list(arrays: list[np.ndarray], name: str, return_tensors: str | None):
    """One batched array when every item has the same shape; otherwise the list (only without tensors)."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    if return_tensors is not None:
        shapes = sorted({a.shape for a in arrays})
        raise ValueError(
            f"cannot batch {name!r}: items have different shapes {shapes}; "
            "pad them (padding=True) or leave return_tensors=None to get a list"
        )
    return list(arrays)


def to_framework(value: np.ndarray, return_tensors: str | None):
    """numpy -> the framework named by return_tensors (lists are left alone when it is None)."""
    if return_tensors is None or return_tensors == "np" or not isinstance(value, np.ndarray):
        return value
    if return_tensors == "pt":
        return optional_import("torch", "torch").from_numpy(np.ascontiguousarray(value))
    return optional_import("tensorflow", "tf").convert_to_tensor(value)


class BatchFeature(dict):
    """A dict of model inputs that also reads by attribute (``batch.input_ids``), so ``model(**batch)`` works."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}; fields: {', '.join(self)}") from None

    def convert_to_tensors(self, return_tensors: str | None) -> "BatchFeature":
        check_return_tensors(return_tensors)
        return BatchFeature({k: to_framework(v, return_tensors) for k, v in self.items()})


# Spaces that decoding leaves before punctuation and English contractions (HF's clean-up rule).
_CLEANUPS = (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")


def clean_up_tokenization(text: str) -> str:
    """Remove the spaces decoding leaves before punctuation and contractions (``"a ." -> "a."``)."""
    for pattern in _CLEANUPS:
        text = text.replace(pattern, pattern[1:] if pattern != " ' " else "'")
    return text


def config_file(path: str | os.PathLike, name: str) -> str:
    """``name`` inside the directory ``path`` (or ``path`` itself when it is a file)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither a directory nor a file")
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {name} in {path!r}")
    return file


read_json = read_json_object


def write_json(file: str, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(file, text.encode("utf-8"))


class PreprocessorConfigFile:
    """``from_pretrained``/``from_dict``, ``save_pretrained`` and ``repr`` of a preprocessor: its
    ``to_dict()`` in ``CONFIG_NAME``. Subclasses set ``COMPATIBLE_TYPES`` (the HF class names
    whose configs mean the same) and ``TYPE_KEYS`` (the config keys that name such a class)."""

    CONFIG_NAME = "preprocessor_config.json"
    COMPATIBLE_TYPES: tuple[str, ...] = ()
    TYPE_KEYS: tuple[str, ...] = ("feature_extractor_type",)

    @classmethod
    def from_dict(cls, config: dict):
        config = dict(config)
        for key in cls.TYPE_KEYS:
            kind = config.get(key)
            if kind is not None and kind not in cls.COMPATIBLE_TYPES:
                raise ValueError(f"{cls.__name__} reads {cls.COMPATIBLE_TYPES} configs, not {kind!r}")
        return cls(**config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any):
        """Read ``preprocessor_config.json`` from a directory (or that file itself) or a Hugging
        Face Hub id (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``)."""
        path = resolve_pretrained(path, [cls.CONFIG_NAME], **pop_hub_options(overrides))
        return cls.from_dict({**read_json(config_file(path, cls.CONFIG_NAME)), **overrides})

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``preprocessor_config.json`` into ``save_directory`` (created if missing).

        Returns:
            The path written.
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(os.fspath(save_directory), self.CONFIG_NAME)
        write_json(path, self.to_dict())
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"
