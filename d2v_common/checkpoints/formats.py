"""Checkpoint IO with numpy only: files in, ``{canonical name: ndarray}`` out, and back.

Formats:

* ``model.safetensors`` (also sharded via ``model.safetensors.index.json``): the default;
* ``pytorch_model.bin`` (also sharded): read with ``torch.load(weights_only=True)`` and only
  when no safetensors file is present; needs torch >= 2.6;
* ``tf_model.h5``: HF's TF layout, read and written with h5py through the weight spec.

Each format is one ``CheckpointFormat`` entry of ``CHECKPOINT_FORMATS`` (file names, reader,
writer, what it needs); the loader, the converter and ``save_pretrained(formats=...)`` iterate
that registry, so a new format is one ``register_checkpoint_format`` call plus its reader and
writer. All writes go through a temporary file and an atomic rename.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import h5py
import numpy as np

from d2v_common.spec import layouts
from d2v_common.configs import CONFIG_NAME
from d2v_common.io_utils import atomic_write_with, write_files_transactionally
from d2v_common.spec.core import WeightSpec

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PT_WEIGHTS_NAME = "pytorch_model.bin"
PT_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
TF_WEIGHTS_NAME = "tf_model.h5"

# Largest tensor we accept from a file (elements): guards against absurd shapes in hostile files.
MAX_TENSOR_ELEMENTS = 2**34


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt or refused."""


# ------------------------------------------------------------------------------- reading
def _check_array(name: str, array: np.ndarray) -> None:
    if array.size > MAX_TENSOR_ELEMENTS:
        raise CheckpointError(f"tensor {name!r} has an absurd shape {array.shape}")


def read_index(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid shard index ({type(e).__name__})") from None
    directory = os.path.dirname(path)
    shards = []
    for shard in weight_map.values():
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} must be a plain file name")
        if shard not in shards:
            shards.append(shard)
    return [os.path.join(directory, s) for s in shards]


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.float32,
}


class LazyTensor:
    """A tensor of a safetensors file, read when first used.

    Shape and dtype come from the file's header, so a checkpoint can be checked against a spec
    before any data is read, and a model can load it one tensor at a time. ``np.asarray``
    reads it. bfloat16 tensors (numpy has none) are read as float32, exactly.
    """

    def __init__(self, source: "_SafetensorsFile", name: str, shape: tuple[int, ...], dtype_code: str):
        self.source, self.name, self.shape, self.dtype_code = source, name, shape, dtype_code
        self.dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_code])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def load(self) -> np.ndarray:
        return self.source.load(self)

    def astype(self, dtype) -> np.ndarray:
        return self.load().astype(dtype)

    def __array__(self, dtype=None, copy=None):
        array = self.load()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.dtype_code})"


class _SafetensorsFile:
    """One safetensors file: validated by the safetensors library, then read tensor by tensor
    with plain file reads (no memory map, so a load never holds the whole file). The file is
    opened once: the handle that read the header reads the tensors, and is closed when the
    last of its tensors is dropped."""

    def __init__(self, path: str):
        from safetensors import SafetensorError, safe_open

        self.path = path
        self.tensors: dict[str, LazyTensor] = {}
        try:
            with safe_open(path, framework="numpy") as handle:  # checks header, offsets, sizes
                for name in handle.keys():
                    info = handle.get_slice(name)
                    shape, code = tuple(int(d) for d in info.get_shape()), info.get_dtype()
                    if code not in _SAFETENSORS_DTYPES:
                        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code}")
                    if int(np.prod(shape)) > MAX_TENSOR_ELEMENTS:
                        raise CheckpointError(f"tensor {name!r} has an absurd shape {shape}")
                    self.tensors[name] = LazyTensor(self, name, shape, code)
            file = open(path, "rb")
            weakref.finalize(self, file.close)
            header_size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(header_size))
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
        except CheckpointError:
            raise
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
        self.data_start = 8 + header_size
        self.offsets = {name: header[name]["data_offsets"] for name in self.tensors}
        self._file, self._lock = file, threading.Lock()

    def load(self, tensor: LazyTensor) -> np.ndarray:
        start, end = self.offsets[tensor.name]
        stored = np.dtype("<u2") if tensor.dtype_code == "BF16" else tensor.dtype.newbyteorder("<")
        out = np.empty(tensor.shape, dtype=stored)
        try:
            if self._read_at(memoryview(out.reshape(-1).view(np.uint8)), self.data_start + start) != end - start:
                raise OSError("file ended early")
        except OSError as e:
            raise CheckpointError(f"cannot read tensor {tensor.name!r} from {self.path}: {e}") from None
        if tensor.dtype_code == "BF16":  # bfloat16 is the top half of a float32
            return (out.astype(np.uint32) << 16).view(np.float32)
        return out.astype(tensor.dtype, copy=False)


    def _read_at(self, buffer: memoryview, offset: int) -> int:
        """Fill ``buffer`` from ``offset`` of the one handle; returns the bytes read. Positional
        reads (``os.preadv``) leave the handle's offset alone, so threads and forked processes
        holding the same handle cannot move each other's reads."""
        if hasattr(os, "preadv"):
            done = 0
            while done < len(buffer):
                got = os.preadv(self._file.fileno(), [buffer[done:]], offset + done)
                if got == 0:
                    break
                done += got
            return done
        with self._lock:  # no positional reads here: one reader at a time
            self._file.seek(offset)
            return self._file.readinto(buffer)


def iter_safetensors(path: str):
    """Yield ``(name, array)`` one tensor at a time."""
    for name, tensor in _SafetensorsFile(path).tensors.items():
        yield name, tensor.load()


def read_safetensors(path: str) -> dict[str, LazyTensor]:
    """Name -> LazyTensor for a safetensors file or a shard index."""
    if path.endswith(".json"):
        out: dict[str, LazyTensor] = {}
        for shard in read_index(path):
            out.update(read_safetensors(shard))
        return out
    return dict(_SafetensorsFile(path).tensors)


def import_torch():
    """torch, imported on demand (d2v_common itself needs no framework)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise CheckpointError("reading or writing pytorch_model.bin needs torch (pip install torch==2.13.0)") from None
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 6):
        raise CheckpointError(
            f"refusing pytorch_model.bin with torch {torch.__version__}: torch >= 2.6 is needed for a safe "
            "weights_only load"
        )
    return torch


def read_pytorch_bin(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".json"):
        out: dict[str, np.ndarray] = {}
        for shard in read_index(path):
            out.update(read_pytorch_bin(shard))
        return out
    torch = import_torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for hostile pickles
        raise CheckpointError(
            f"refused to load {path}: not a plain tensor state dict ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    out = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a named tensor")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            tensor = tensor.float()
        out[name] = tensor.contiguous().numpy()
        _check_array(name, out[name])
    return out


# HDF5 caps one attribute near 64 KiB; longer name lists are split as key0, key1, ... (as Keras does).
_H5_ATTR_LIMIT = 64000


def _h5_attr_strings(obj, key: str, path: str) -> list[str]:
    if key in obj.attrs:
        values = list(np.asarray(obj.attrs[key]).ravel())
    elif f"{key}0" in obj.attrs:
        values, i = [], 0
        while f"{key}{i}" in obj.attrs:
            values += list(np.asarray(obj.attrs[f"{key}{i}"]).ravel())
            i += 1
    else:
        raise CheckpointError(f"{path} is not an HF tf_model.h5: attribute {key!r} missing")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _open_h5(path: str):
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"cannot open {path} as HDF5: {e}") from None


def _h5_layer_groups(f, path: str):
    """``(group, weight_names)`` for each layer group an HF ``tf_model.h5`` lists."""
    for group_name in _h5_attr_strings(f, "layer_names", path):
        if group_name not in f:
            raise CheckpointError(f"{path}: layer group {group_name!r} listed but missing")
        group = f[group_name]
        yield group, _h5_attr_strings(group, "weight_names", path)


def _h5_set_attr_strings(obj, key: str, values: list[str]) -> None:
    encoded = np.array([v.encode("utf-8") for v in values], dtype="S")
    chunks = max(1, -(-encoded.nbytes // _H5_ATTR_LIMIT))
    if chunks == 1:
        obj.attrs[key] = encoded
        return
    for i, part in enumerate(np.array_split(encoded, chunks)):
        obj.attrs[f"{key}{i}"] = part


class LazyH5Tensor(LazyTensor):
    """A dataset of an HF ``tf_model.h5``, read when first used (as ``LazyTensor``).

    ``shape`` and ``load()`` are canonical (PyTorch layout); ``read_keras_layout()`` reads the
    dataset as stored (Keras layout), which the Keras loader assigns with no transpose to the
    canonical layout and back (``layouts.keras_array``).
    """

    def __init__(self, source: "_H5File", name: str, stored_shape: tuple[int, ...], dtype, to_canonical):
        self.source, self.name, self.stored_shape = source, name, stored_shape
        self.to_canonical = to_canonical  # axis order from the stored layout to canonical, or None
        self.shape = stored_shape if to_canonical is None else tuple(stored_shape[i] for i in to_canonical)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.dtype_code = self.dtype.name

    def read_keras_layout(self) -> np.ndarray:
        return self.source.load(self)

    def load(self) -> np.ndarray:
        array = self.read_keras_layout()
        return array if self.to_canonical is None else np.ascontiguousarray(np.transpose(array, self.to_canonical))

    def __repr__(self) -> str:
        return f"LazyH5Tensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class _H5File:
    """One ``tf_model.h5`` read tensor by tensor. A plain contiguous dataset (what Keras and HF
    write) is read straight from its byte range with ``os.pread`` on a descriptor held open
    (so a file replaced after the walk is never mixed in); any other layout (chunked,
    compressed) is read through h5py."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"cannot open {path}: {e}") from None
        self.closer = weakref.finalize(self, os.close, self.fd)
        self.places: dict[str, tuple[int | None, np.dtype]] = {}  # h5 path -> (byte offset, stored dtype)

    def add(self, dataset, to_canonical) -> LazyH5Tensor:
        plain = dataset.chunks is None and dataset.compression is None and not dataset.external
        offset = dataset.id.get_offset() if plain and dataset.size else None
        self.places[dataset.name] = (offset, dataset.dtype)
        return LazyH5Tensor(self, dataset.name, tuple(int(d) for d in dataset.shape), dataset.dtype, to_canonical)

    def load(self, tensor: LazyH5Tensor) -> np.ndarray:
        offset, stored = self.places[tensor.name]
        out = np.empty(tensor.stored_shape, dtype=stored)
        try:
            if offset is None:
                with _open_h5(self.path) as f:
                    out[...] = f[tensor.name][()]
            else:
                view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
                while done < len(view):
                    n = os.preadv(self.fd, [view[done:]], offset + done)
                    if n <= 0:
                        raise OSError("file ended early")
                    done += n
        except (OSError, KeyError) as e:
            raise CheckpointError(f"cannot read dataset {tensor.name!r} from {self.path}: {e}") from None
        return out.astype(tensor.dtype, copy=False)


def read_tf_h5(path: str, spec: WeightSpec) -> tuple[dict[str, LazyH5Tensor | np.ndarray], list[str]]:
    """HF ``tf_model.h5`` -> canonical tensors, read lazily (``LazyH5Tensor``); also returns the
    h5 names no spec entry claims.

    One walk over the layer groups checks names and shapes; no tensor data is read until a
    tensor is used, so a loader holds one tensor at a time. Only datasets inside the file are
    read: external links and external storage are refused.
    """
    by_h5 = layouts.h5_names(spec)
    bn_counters = {layouts.h5_name(p, spec): p for p in spec.stored() if not layouts.leaf_rule(p).in_hf_h5}
    arrays: dict[str, LazyH5Tensor | np.ndarray] = {}
    unexpected: list[str] = []
    with _open_h5(path) as f:
        source = _H5File(path)
        for group, names in _h5_layer_groups(f, path):
            listed = [(n, True) for n in names]
            # d2v writes PyTorch-only buffers (BatchNorm counters) unlisted, so HF ignores them.
            listed += [(n, False) for n in _unlisted_datasets(group, set(names))]
            for full_name, is_listed in listed:
                short = "/".join(full_name.split("/")[1:])
                p = by_h5.get(short) if is_listed else bn_counters.get(short)
                if p is None:
                    if is_listed:
                        unexpected.append(short)
                    continue
                dataset = _h5_dataset(group, full_name, path)
                if int(np.prod(dataset.shape)) > MAX_TENSOR_ELEMENTS:
                    raise CheckpointError(f"{path}: dataset {short!r} has an absurd shape {dataset.shape}")
                to_canonical = layouts.leaf_rule(p).inverse_perm if is_listed else None
                if to_canonical is not None and len(dataset.shape) != len(to_canonical):
                    raise ValueError(f"{p.name}: Keras/h5 tensor has shape {tuple(dataset.shape)}, "
                                     f"expected {layouts.keras_shape(p)}")
                arrays[p.name] = source.add(dataset, to_canonical)
    # HF's own files lack PyTorch-only buffers (BatchNorm counters): they start from zero,
    # as HF's TF -> PT conversion leaves them.
    for p in bn_counters.values():
        arrays.setdefault(p.name, np.zeros(p.shape, dtype=p.dtype))
    return arrays, unexpected


def _unlisted_datasets(group, listed: set[str]) -> list[str]:
    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name not in listed and name.endswith("num_batches_tracked:0"):
            found.append(name)

    group.visititems(visit)
    return found


def _h5_dataset(group, name: str, path: str):
    link = group.get(name, getlink=True)
    if link is None:
        raise CheckpointError(f"{path}: dataset {name!r} listed but missing")
    parts = name.split("/")
    node = group
    for part in parts:  # refuse soft/external links anywhere on the path
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise CheckpointError(f"{path}: {name!r} goes through a {type(link).__name__}; only plain datasets are read")
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise CheckpointError(f"{path}: {name!r} is not a dataset")
    if node.external:
        raise CheckpointError(f"{path}: dataset {name!r} uses external storage; refused")
    return node


def read_shapes(directory: str | os.PathLike, prefer: str | None = None) -> tuple[str, dict[str, tuple[int, ...]]]:
    """``(format, {name: shape})`` of a checkpoint directory, from its headers only (no tensor
    data is read). Names and shapes are the file's own: canonical for safetensors and
    ``pytorch_model.bin``, HF's h5 names (``a/b/kernel:0``, Keras layout) for ``tf_model.h5``."""
    fmt, path = find_checkpoint(directory, prefer)
    return fmt, read_file_shapes(fmt, path)


def read_file_shapes(fmt: str, path: str) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the weights at ``path`` (a file or shard index) in format ``fmt``,
    from the headers only (names as in ``read_shapes``)."""
    if fmt == "safetensors":
        return {name: t.shape for name, t in read_safetensors(path).items()}
    if fmt == "pt-bin":
        torch = import_torch()
        shapes: dict[str, tuple[int, ...]] = {}
        for file in read_index(path) if path.endswith(".json") else [path]:
            try:  # the meta device keeps shapes and drops the data
                state = torch.load(file, map_location="meta", weights_only=True)
            except Exception as e:  # noqa: BLE001 - torch raises many types for hostile pickles
                raise CheckpointError(f"refused to load {file}: {type(e).__name__}: {str(e)[:200]}") from None
            if not isinstance(state, dict):
                raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict")
            shapes.update({k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})
        return shapes
    if fmt != "tf-h5":  # a registered format without a header-only reader: read it, keep the shapes
        entry = checkpoint_format(fmt)
        if entry.needs_spec:
            raise ValueError(f"reading the shapes of {entry.file_name} needs the model's weight spec")
        arrays, _ = entry.read(path)
        return {name: tuple(np.shape(array)) for name, array in arrays.items()}
    shapes = {}
    with _open_h5(path) as f:
        for group, names in _h5_layer_groups(f, path):
            for full_name in names:
                shapes["/".join(full_name.split("/")[1:])] = tuple(_h5_dataset(group, full_name, path).shape)
    return shapes


# ------------------------------------------------------------------------------- writing
# ``_dump_*`` write one format to a given (temporary) path; the public writers and
# ``write_checkpoint`` wrap them in atomic renames.
def _dump_safetensors(path: str, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    payload = {name: np.require(a, requirements="C") for name, a in arrays.items()}
    save_file(payload, path, metadata={"format": "pt"})


def _dump_pytorch_bin(path: str, arrays: dict[str, np.ndarray]) -> None:
    torch = import_torch()
    state = {name: torch.from_numpy(np.require(a, requirements="C")).clone() for name, a in arrays.items()}
    torch.save(state, path)


def _dump_tf_h5(path: str, arrays: dict[str, np.ndarray], spec: WeightSpec) -> None:
    model_name = layouts.h5_model_name(spec)
    entries = []
    for p in spec.stored():
        if p.name not in arrays:
            raise ValueError(f"cannot write tf_model.h5: tensor {p.name!r} is missing")
        rule = layouts.leaf_rule(p)
        value = layouts.keras_array(p, arrays[p.name]) if rule.in_hf_h5 else np.asarray(arrays[p.name])
        entries.append((layouts.h5_name(p, spec), value, rule.in_hf_h5))
    with h5py.File(path, "w") as f:
        groups = layouts.h5_layer_names(spec)
        _h5_set_attr_strings(f, "layer_names", groups)
        f.attrs["backend"] = "tensorflow"
        weight_names: dict[str, list[str]] = {g: [] for g in groups}
        for short, value, listed in entries:
            group = short.split("/")[0]
            full = f"{model_name}/{short}"
            f.require_group(group).create_dataset(full, data=value)
            if listed:  # PyTorch-only buffers stay unlisted, so HF's loader ignores them
                weight_names[group].append(full)
        for group, names in weight_names.items():
            _h5_set_attr_strings(f.require_group(group), "weight_names", names)


def write_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_with(path, lambda tmp: _dump_safetensors(tmp, arrays))


def write_pytorch_bin(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    atomic_write_with(path, lambda tmp: _dump_pytorch_bin(tmp, arrays))


def write_tf_h5(path: str | os.PathLike, arrays: dict[str, np.ndarray], spec: WeightSpec) -> None:
    """Write HF's ``tf_model.h5`` layout (loadable by transformers' TF classes)."""
    atomic_write_with(path, lambda tmp: _dump_tf_h5(tmp, arrays, spec))


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _without_tied(arrays: dict[str, np.ndarray], spec: WeightSpec | None) -> dict[str, np.ndarray]:
    """safetensors refuses shared storage, so tied copies are left out (HF does the same)."""
    if spec is None:
        return arrays
    tied = {p.name for p in spec if p.tied_to is not None}
    return {k: v for k, v in arrays.items() if k not in tied}


def _bfloat16_notes(path: str, spec: WeightSpec | None) -> list[str]:
    """``.bin`` tensors stored as bfloat16 (read as metadata only) become float32."""
    torch = import_torch()
    names = []
    for file in weight_files(path):
        state = torch.load(file, map_location="meta", weights_only=True)
        names += [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16]
    if not names:
        return []
    return [f"note: {len(names)} bfloat16 tensor(s) were read as float32 (numpy has no bfloat16; "
            "the values are exact) and are written as float32"]


def _h5_counter_notes(path: str, spec: WeightSpec | None) -> list[str]:
    """BatchNorm counters an HF tf_model.h5 lacks (d2v writes them, HF does not)."""
    found = []
    with h5py.File(path, "r") as f:
        f.visit(lambda name: found.append(name) if name.endswith("num_batches_tracked:0") else None)
    counters = 0 if spec is None else sum(not layouts.leaf_rule(p).in_hf_h5 for p in spec.stored())
    if len(found) >= counters:
        return []
    return [f"note: {counters - len(found)} BatchNorm counter(s) (num_batches_tracked) are not in "
            "this tf_model.h5 (HF's TF classes do not keep them); they start at 0"]


# ------------------------------------------------------------------------------- registry
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class CheckpointFormat:
    """One weight-file format that checkpoints can be read from and written in.

    Args:
        name: the format's name in ``formats=[...]``, ``checkpoint_format=`` and d2v-convert.
        file_name: the single-file name (``model.safetensors``).
        read_file: ``(path, spec) -> (arrays, unexpected names)`` for one file (not an index);
            ``spec`` is None unless ``needs_spec``.
        write_file: ``(path, arrays, spec) -> None``: write one complete file at ``path``.
        index_name: the shard index's name, or None when the format is never sharded.
        shard_pattern: a regular expression matching the format's shard file names.
        needs_spec: reading or writing maps names through the model's weight spec.
        needs_torch: reading or writing needs PyTorch.
        conversion_notes: ``(path, spec) -> list[str]``: what d2v-convert should tell the user
            about a file of this format (e.g. dtypes changed on reading).
        stored_tensors: ``(arrays, spec) -> arrays``: the tensors a file of this format holds
            (safetensors leaves tied copies out); set together with ``write_shard``.
        write_shard: ``(path, arrays) -> None``: write exactly ``arrays`` as one shard; a format
            with it (and ``index_name``) can be written sharded (``max_shard_size``).
    """

    name: str
    file_name: str
    read_file: Callable[[str, WeightSpec | None], tuple[Arrays, list[str]]]
    write_file: Callable[[str, Arrays, WeightSpec | None], None]
    index_name: str | None = None
    shard_pattern: str | None = None
    needs_spec: bool = False
    needs_torch: bool = False
    conversion_notes: Callable[[str, WeightSpec | None], list[str]] | None = None
    stored_tensors: Callable[[Arrays, WeightSpec | None], Arrays] | None = None
    write_shard: Callable[[str, Arrays], None] | None = None

    @property
    def shardable(self) -> bool:
        return self.write_shard is not None and self.index_name is not None

    def shard_name(self, number: int, count: int) -> str:
        """HF's shard file name: ``model-00001-of-00003.safetensors``."""
        stem, ext = os.path.splitext(self.file_name)
        return f"{stem}-{number:05d}-of-{count:05d}{ext}"

    @property
    def file_names(self) -> tuple[str, ...]:
        """The names a checkpoint of this format is found under, in order of preference."""
        return (self.file_name,) + ((self.index_name,) if self.index_name else ())

    def owns(self, file_name: str) -> bool:
        """Whether ``file_name`` is one of this format's files (shards included)."""
        return file_name in self.file_names or bool(
            self.shard_pattern and re.fullmatch(self.shard_pattern, file_name)
        )

    def read(self, path: str, spec: WeightSpec | None = None) -> tuple[Arrays, list[str]]:
        """Read a file or a shard index of this format: ``(arrays, unexpected names)``.

        Raises:
            ValueError: the format needs the spec and none was given.
            CheckpointError: a file is unreadable or a tensor appears in two shards.
        """
        if self.needs_spec and spec is None:
            raise ValueError(f"reading {self.file_name} needs the model's weight spec")
        arrays: Arrays = {}
        unexpected: list[str] = []
        for file in weight_files(path):
            part, extra = self.read_file(file, spec)
            clash = sorted(set(part) & set(arrays))
            if clash:
                raise CheckpointError(f"tensor {clash[0]!r} appears in more than one shard")
            arrays.update(part)
            unexpected += extra
        return arrays, unexpected


CHECKPOINT_FORMATS: dict[str, CheckpointFormat] = {}
# The entries below call the module's readers and writers through lambdas, so they always reach
# the functions by their current names (tests patch them to inject failures).


def register_checkpoint_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add ``fmt`` to ``CHECKPOINT_FORMATS``; registration order is the loading preference.

    Returns:
        ``fmt``, so an entry can be registered where it is defined.
    """
    if fmt.name in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered")
    CHECKPOINT_FORMATS[fmt.name] = fmt
    return fmt


register_checkpoint_format(CheckpointFormat(
    name="safetensors",
    file_name=SAFE_WEIGHTS_NAME,
    index_name=SAFE_WEIGHTS_INDEX_NAME,
    shard_pattern=r"model-\d+-of-\d+\.safetensors",
    read_file=lambda path, spec: (read_safetensors(path), []),  # lazy: tensors are read when used
    write_file=lambda path, arrays, spec: _dump_safetensors(path, _without_tied(arrays, spec)),
    stored_tensors=lambda arrays, spec: _without_tied(arrays, spec),
    write_shard=lambda path, arrays: _dump_safetensors(path, arrays),
))
register_checkpoint_format(CheckpointFormat(
    name="pt-bin",
    file_name=PT_WEIGHTS_NAME,
    index_name=PT_WEIGHTS_INDEX_NAME,
    shard_pattern=r"pytorch_model-\d+-of-\d+\.bin",
    read_file=lambda path, spec: (read_pytorch_bin(path), []),
    write_file=lambda path, arrays, spec: _dump_pytorch_bin(path, arrays if spec is None else spec.tie(dict(arrays))),
    needs_torch=True,
    conversion_notes=_bfloat16_notes,
    stored_tensors=lambda arrays, spec: arrays if spec is None else spec.tie(dict(arrays)),
    write_shard=lambda path, arrays: _dump_pytorch_bin(path, arrays),
))
register_checkpoint_format(CheckpointFormat(
    name="tf-h5",
    file_name=TF_WEIGHTS_NAME,
    read_file=lambda path, spec: read_tf_h5(path, spec),
    write_file=lambda path, arrays, spec: _dump_tf_h5(path, arrays, spec),
    needs_spec=True,
    conversion_notes=_h5_counter_notes,
))

def registered_weight_files() -> tuple[str, ...]:
    """Every single-file and index name of the registered formats, in loading order."""
    return tuple(name for fmt in CHECKPOINT_FORMATS.values() for name in fmt.file_names)


# The built-in formats' tables, as they were before the registry (kept for existing callers).
WEIGHT_FILES = registered_weight_files()
FORMAT_FILES = {fmt.name: fmt.file_name for fmt in CHECKPOINT_FORMATS.values()}


def checkpoint_format(name: str) -> CheckpointFormat:
    """The registered format called ``name``.

    Raises:
        ValueError: no such format (the message lists the registered ones).
    """
    if name not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint format {name!r}; use {', '.join(CHECKPOINT_FORMATS)}")
    return CHECKPOINT_FORMATS[name]


def format_of_file(file_name: str) -> CheckpointFormat | None:
    """The registered format a weight file (single file, index or shard) belongs to, if any."""
    return next((fmt for fmt in CHECKPOINT_FORMATS.values() if fmt.owns(file_name)), None)


def weight_files(path: str) -> list[str]:
    """The files holding the weights: the shards of an index, else the file itself."""
    return read_index(path) if path.endswith(".json") else [path]


# ------------------------------------------------------------------------------- choosing
def select_weights(
    available: Iterable[str], *, prefer: str | None = None, torch_available: bool = True
) -> tuple[CheckpointFormat, str] | None:
    """The format and file to load from a set of file names, or None when none fits.

    Args:
        available: file names present (a directory or a hub repository listing).
        prefer: a format name tried first; the others follow in registry order.
        torch_available: when False, formats that need torch are passed over.

    Returns:
        ``(format, file name)`` (an index name for a sharded checkpoint), or None.
    """
    available = set(available)
    order = list(CHECKPOINT_FORMATS.values())
    if prefer is not None:
        order.sort(key=lambda fmt: fmt.name != checkpoint_format(prefer).name)
    for fmt in order:
        if fmt.needs_torch and not torch_available:
            continue
        for name in fmt.file_names:
            if name in available:
                return fmt, name
    return None


def files_to_fetch(
    available: Iterable[str], *, torch_available: bool, prefer: str | None = None
) -> list[str]:
    """The files to download from a repository listing to load a model, in order.

    ``config.json`` comes first, then the chosen weights: the single file, or the shard index
    followed by the shards of that format found in the listing (sorted).

    Args:
        available: every file name of the repository (e.g. ``HfApi().list_repo_files``).
        torch_available: whether torch can be imported here (``.bin`` files need it).
        prefer: a format name to choose when several are present.

    Returns:
        File names, in the order to fetch them.

    Raises:
        FileNotFoundError: the listing has no ``config.json`` or no weights this machine can read.
    """
    available = sorted(set(available))
    if CONFIG_NAME not in available:
        raise FileNotFoundError(f"the repository has no {CONFIG_NAME}")
    chosen = select_weights(available, prefer=prefer, torch_available=torch_available)
    if chosen is None:
        readable = [n for f in CHECKPOINT_FORMATS.values() if torch_available or not f.needs_torch for n in f.file_names]
        raise FileNotFoundError(f"no weights in the repository: expected one of {', '.join(readable)}")
    fmt, name = chosen
    shards = [n for n in available if n not in fmt.file_names and fmt.owns(n)] if name == fmt.index_name else []
    return [CONFIG_NAME, name, *shards]


def find_checkpoint(directory: str | os.PathLike, prefer: str | None = None) -> tuple[str, str]:
    """``(format, path)`` of the weights in ``directory``, in registry order
    (safetensors > pytorch bin > tf h5).

    ``prefer`` ("safetensors" / "pt-bin" / "tf-h5") picks a format when several are present.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    present = [n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))]
    chosen = select_weights(present, prefer=prefer)
    if chosen is None:
        raise FileNotFoundError(
            f"no weights in {directory!r}: expected one of {', '.join(registered_weight_files())}"
        )
    fmt, name = chosen
    return fmt.name, os.path.join(directory, name)


def read_checkpoint(
    directory: str | os.PathLike, spec: WeightSpec | None = None, prefer: str | None = None
) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Read a checkpoint directory: ``(arrays, unexpected h5 names, format)``.

    ``spec`` is needed only for formats that map names through it (tf_model.h5).
    """
    fmt, path = find_checkpoint(directory, prefer)
    arrays, unexpected = checkpoint_format(fmt).read(path, spec)
    return arrays, unexpected, fmt


def formats_from_flags(
    formats: Iterable[str] | None = None, safe_serialization: bool = True, tf_h5: bool = False
) -> list[str]:
    """The formats ``save_pretrained`` writes: ``formats`` when given, else the HF-style flags
    (safetensors, or pytorch_model.bin when ``safe_serialization=False``; plus tf_model.h5 with
    ``tf_h5=True``)."""
    if formats is not None:
        if isinstance(formats, str):
            formats = [formats]
        formats = list(formats)
        if not formats:
            raise ValueError("formats must name at least one checkpoint format")
        return formats
    return ["safetensors" if safe_serialization else "pt-bin"] + (["tf-h5"] if tf_h5 else [])


# ------------------------------------------------------------------------------- writing
def write_checkpoint(
    directory: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    spec: WeightSpec | None = None,
    formats: Iterable[str] = ("safetensors",),
    extra_files: dict[str, bytes] | None = None,
    max_shard_size: int | str | None = None,
) -> list[str]:
    """Write ``arrays`` into ``directory`` in each format, plus ``extra_files`` (name -> bytes,
    e.g. ``config.json``); returns the paths written.

    With ``max_shard_size`` (bytes, or HF's strings such as ``"500MB"`` / ``"2GB"``), a
    shardable format whose tensors exceed it is written in HF's sharded layout: shards
    ``model-00001-of-00003.safetensors`` ... (each at most ``max_shard_size``, unless one tensor
    alone is larger) and ``model.safetensors.index.json`` (``metadata.total_size``,
    ``weight_map``). Formats that cannot be sharded (``tf_model.h5``) are written whole.

    Every file is first written in full beside its target; only then are they swapped in,
    weights first (shards, then their index) and extra files last, with a rollback if anything
    fails: an interrupted save leaves the previous checkpoint as it was. Weight files of a
    previous save that this save did not write (single files, indexes, shards) are removed
    afterwards, so the directory never offers stale weights.
    """
    directory = os.fspath(directory)
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    chosen = []
    for name in formats:
        if name not in CHECKPOINT_FORMATS:
            raise ValueError(f"unknown checkpoint format {name!r}; use {', '.join(CHECKPOINT_FORMATS)}")
        fmt = CHECKPOINT_FORMATS[name]
        if fmt.needs_spec and spec is None:
            raise ValueError(f"writing {fmt.file_name} needs the model's weight spec")
        chosen.append(fmt)
    plan = []
    for fmt in chosen:
        stored = fmt.stored_tensors(arrays, spec) if limit is not None and fmt.shardable else None
        shards = shard_plan(stored, limit) if stored is not None else []
        if len(shards) <= 1:
            plan.append((os.path.join(directory, fmt.file_name),
                         lambda tmp, fmt=fmt: fmt.write_file(tmp, arrays, spec)))
            continue
        weight_map = {}
        for number, names in enumerate(shards, 1):
            shard = fmt.shard_name(number, len(shards))
            weight_map.update(dict.fromkeys(names, shard))
            part = {n: stored[n] for n in names}
            plan.append((os.path.join(directory, shard), lambda tmp, fmt=fmt, part=part: fmt.write_shard(tmp, part)))
        index = {"metadata": {"total_size": sum(_nbytes(a) for a in stored.values())}, "weight_map": weight_map}
        index_bytes = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
        plan.append((os.path.join(directory, fmt.index_name), lambda tmp, data=index_bytes: _write_bytes(tmp, data)))
    written = {target for target, _ in plan}
    for name, data in (extra_files or {}).items():  # after the weights: config.json goes in last
        plan.append((os.path.join(directory, name), lambda tmp, data=data: _write_bytes(tmp, data)))
    write_files_transactionally(plan)
    _remove_stale_weights(directory, keep=written)
    return [target for target, _ in plan]


_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or HF's size strings (``"500MB"``, ``"2GB"``: powers of 10; ``"2GiB"``:
    powers of 2).

    Raises:
        ValueError: not a positive int or such a string.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"max_shard_size must be a number of bytes or a string such as '2GB', got {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*", value, re.I)
        if match is None:
            raise ValueError(f"max_shard_size {value!r} is not a size such as '500MB', '2GB' or '2GiB'")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {value!r}")
    return value


def _nbytes(array) -> int:
    return int(np.prod(np.shape(array))) * np.dtype(array.dtype).itemsize


def shard_plan(arrays: dict[str, np.ndarray], max_shard_size: int) -> list[list[str]]:
    """Tensor names per shard, in the arrays' order: a shard is closed when the next tensor
    would take it past ``max_shard_size`` (a tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = []
    size = 0
    for name, array in arrays.items():
        nbytes = _nbytes(array)
        if not shards or (size + nbytes > max_shard_size and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_pretrained(
    directory: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    spec: WeightSpec,
    config,
    formats: list[str],
    max_shard_size: int | str | None = None,
) -> list[str]:
    """Write a model folder: the weights in each format (sharded past ``max_shard_size``, see
    ``write_checkpoint``) and ``config.json`` (its ``architectures`` set to the spec's), staged
    so that an interrupted save leaves the previous checkpoint intact (config renamed in last)."""
    config.architectures = [spec.architecture]
    config_bytes = config.to_json_string().encode("utf-8")
    return write_checkpoint(directory, arrays, spec, formats, extra_files={CONFIG_NAME: config_bytes},
                            max_shard_size=max_shard_size)


def _remove_stale_weights(directory: str, keep: set[str]) -> None:
    stale = [os.path.join(directory, n) for n in registered_weight_files()]
    for fmt in CHECKPOINT_FORMATS.values():
        index = os.path.join(directory, fmt.index_name) if fmt.index_name else None
        if index and os.path.isfile(index):
            try:
                stale += read_index(index)
            except CheckpointError:
                pass
    # shards of an earlier save whose index this save replaced (another shard count)
    stale += [os.path.join(directory, n) for n in os.listdir(directory)
              if any(fmt.shard_pattern and re.fullmatch(fmt.shard_pattern, n) for fmt in CHECKPOINT_FORMATS.values())]
    for path in stale:
        if path not in keep and os.path.isfile(path):
            os.unlink(path)
