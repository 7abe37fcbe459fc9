"""Declarative per-parameter weight specs.

A spec lists every tensor a model holds (parameters and persistent buffers) with:

* ``name``  - the canonical name, which is HF's PyTorch state-dict key;
* ``shape`` - computed from the config;
* ``kind``  - the layer type that owns it (``linear``, ``conv2d``, ``layer_norm`` ...), which
  decides how the tensor is laid out in every other format (see ``d2v_common.spec.layouts``);
* ``leaf``  - the tensor's role in that layer (``weight``, ``bias``, ``running_mean`` ...);
* ``init``  - how a freshly built model initialises it, shared by both frameworks.

Family modules (``text``, ``audio``, ``vision``) build their specs with ``SpecBuilder``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

# Layer kinds and the leaves each one owns.
KIND_LEAVES = {
    "linear": ("weight", "bias"),
    "conv1d": ("weight", "bias"),
    "conv2d": ("weight", "bias"),
    "conv_transpose2d": ("weight", "bias"),
    "embedding": ("weight",),
    "layer_norm": ("weight", "bias"),
    "batch_norm": ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    # A bare tensor (cls token, layer scale, bias table ...): stored as is everywhere.
    "param": None,
}


@dataclass(frozen=True)
class Init:
    """How a fresh model fills a tensor: ``normal(std)``, ``uniform(a, b)``, ``fill(v)``,
    ``kaiming_normal`` (fan-in) or ``zeros``/``ones`` (fill 0 / 1)."""

    rule: str
    args: tuple = ()

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator, dtype: str) -> np.ndarray:
        if self.rule == "normal":
            out = rng.normal(0.0, self.args[0], size=shape)
        elif self.rule == "uniform":
            out = rng.uniform(self.args[0], self.args[1], size=shape)
        elif self.rule == "fill":
            out = np.full(shape, self.args[0])
        elif self.rule == "kaiming_normal":
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            out = rng.normal(0.0, math.sqrt(2.0 / max(fan_in, 1)), size=shape)
        else:
            raise ValueError(f"unknown init rule {self.rule!r}")
        return np.asarray(out, dtype=dtype)


def normal(std: float) -> Init:
    return Init("normal", (float(std),))


def uniform(a: float, b: float) -> Init:
    return Init("uniform", (float(a), float(b)))


def fill(value: float) -> Init:
    return Init("fill", (float(value),))


ZEROS = fill(0.0)
ONES = fill(1.0)
KAIMING = Init("kaiming_normal")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    kind: str
    leaf: str
    init: Init = ZEROS
    dtype: str = "float32"
    trainable: bool = True
    # Name of the tensor this one shares storage with (LM decoder <- word embeddings).
    tied_to: str | None = None

    @property
    def module(self) -> str:
        """The owning layer's dotted path (the name minus its leaf)."""
        return self.name[: -len(self.leaf) - 1] if self.name.endswith("." + self.leaf) else ""


@dataclass
class WeightSpec:
    """The full, ordered tensor list of one architecture built from one config."""

    architecture: str  # HF PyTorch class name, e.g. "Data2VecVisionForSemanticSegmentation"
    family: str  # "text" | "audio" | "vision"
    base_prefix: str  # "data2vec_vision" etc.
    params: list[ParamSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.params}
        if len(self._by_name) != len(self.params):
            dupes = sorted({p.name for p in self.params if sum(q.name == p.name for q in self.params) > 1})
            raise AssertionError(f"duplicate names in spec: {dupes}")

    # --- lookup -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> ParamSpec:
        return self._by_name[name]

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape for p in self.params}

    @property
    def is_base_model(self) -> bool:
        return not self.base_prefix or not any(p.name.startswith(self.base_prefix + ".") for p in self.params)

    def stored(self) -> list[ParamSpec]:
        """Tensors a checkpoint holds: everything except tied copies."""
        return [p for p in self.params if p.tied_to is None]

    def backbone_names(self) -> set[str]:
        """Names of the encoder's tensors (with the base prefix if this is a head model)."""
        if self.is_base_model:
            return set(self._by_name)
        return {n for n in self._by_name if n.startswith(self.base_prefix + ".")}

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.stored())

    # --- arrays ---------------------------------------------------------------------------
    def init_arrays(self, seed: int | None = None, names=None) -> dict[str, np.ndarray]:
        """Fresh weights following each tensor's init rule (tied tensors share their source).

        ``names`` restricts the result to those tensors.
        """
        rng = np.random.default_rng(seed)
        wanted = None if names is None else set(names)
        out = {
            p.name: p.init.sample(p.shape, rng, p.dtype)
            for p in self.stored()
            if wanted is None or p.name in wanted
        }
        return self.tie(out)

    def random_arrays(self, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
        """Every tensor random (no zero biases or constant tokens), for parity tests.

        Weight matrices and kernels get std 1/sqrt(fan_in) so activations stay O(1) through
        deep stacks; other tensors get std ``scale``. BatchNorm variances stay positive and
        counters stay integers.
        """
        rng = np.random.default_rng(seed)
        out = {}
        for p in self.stored():
            if p.dtype.startswith("int"):
                out[p.name] = np.asarray(rng.integers(0, 100, size=p.shape), dtype=p.dtype)
            elif p.leaf == "running_var":
                out[p.name] = rng.uniform(0.5, 1.5, size=p.shape).astype(p.dtype)
            elif p.kind in ("layer_norm", "batch_norm") and p.leaf == "weight":
                out[p.name] = (1.0 + scale * rng.standard_normal(p.shape)).astype(p.dtype)
            elif p.leaf == "weight" and p.kind in ("linear", "conv1d", "conv2d", "conv_transpose2d"):
                fan_in = p.shape[0] if p.kind == "conv_transpose2d" else int(np.prod(p.shape[1:]))
                out[p.name] = (rng.standard_normal(p.shape) / np.sqrt(fan_in)).astype(p.dtype)
            else:
                out[p.name] = (scale * rng.standard_normal(p.shape)).astype(p.dtype)
        return self.tie(out)

    def tie(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fill tied tensors from their sources (no-op where the source is absent)."""
        for p in self.params:
            if p.tied_to is not None and p.tied_to in arrays and p.name not in arrays:
                arrays[p.name] = arrays[p.tied_to]
        return arrays


class SpecBuilder:
    """Collects ``ParamSpec`` entries; ``scope`` returns a builder that prefixes names."""

    def __init__(self, initializer_range: float, prefix: str = "", _out: list | None = None):
        self.std = initializer_range
        self.prefix = prefix
        self.out: list[ParamSpec] = [] if _out is None else _out

    def scope(self, name: str) -> "SpecBuilder":
        return SpecBuilder(self.std, self._join(name), self.out)

    def _join(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _add(self, module: str, kind: str, leaf: str, shape, init: Init, **kw) -> None:
        base = self._join(module) if module else self.prefix
        name = f"{base}.{leaf}" if base else leaf
        self.out.append(ParamSpec(name, tuple(int(s) for s in shape), kind, leaf, init, **kw))

    # --- layers (PyTorch weight shapes) --------------------------------------------------
    def linear(self, name: str, in_features: int, out_features: int, bias: bool = True, init: Init | None = None,
               bias_init: Init = ZEROS, tied_weight: str | None = None, tied_bias: str | None = None) -> None:
        self._add(name, "linear", "weight", (out_features, in_features), init or normal(self.std),
                  tied_to=tied_weight)
        if bias:
            self._add(name, "linear", "bias", (out_features,), bias_init, tied_to=tied_bias)

    def conv1d(self, name: str, in_ch: int, out_ch: int, kernel: int, groups: int = 1, bias: bool = True,
               init: Init | None = None, bias_init: Init = ZEROS) -> None:
        self._add(name, "conv1d", "weight", (out_ch, in_ch // groups, kernel), init or KAIMING)
        if bias:
            self._add(name, "conv1d", "bias", (out_ch,), bias_init)

    def conv2d(self, name: str, in_ch: int, out_ch: int, kernel: tuple[int, int], bias: bool = True,
               init: Init | None = None) -> None:
        self._add(name, "conv2d", "weight", (out_ch, in_ch, *kernel), init or normal(self.std))
        if bias:
            self._add(name, "conv2d", "bias", (out_ch,), ZEROS)

    def conv_transpose2d(self, name: str, in_ch: int, out_ch: int, kernel: tuple[int, int]) -> None:
        self._add(name, "conv_transpose2d", "weight", (in_ch, out_ch, *kernel), normal(self.std))
        self._add(name, "conv_transpose2d", "bias", (out_ch,), ZEROS)

    def embedding(self, name: str, num: int, dim: int) -> None:
        self._add(name, "embedding", "weight", (num, dim), normal(self.std))

    def layer_norm(self, name: str, dim: int) -> None:
        self._add(name, "layer_norm", "weight", (dim,), ONES)
        self._add(name, "layer_norm", "bias", (dim,), ZEROS)

    def batch_norm(self, name: str, dim: int) -> None:
        self._add(name, "batch_norm", "weight", (dim,), ONES)
        self._add(name, "batch_norm", "bias", (dim,), ZEROS)
        self._add(name, "batch_norm", "running_mean", (dim,), ZEROS, trainable=False)
        self._add(name, "batch_norm", "running_var", (dim,), ONES, trainable=False)
        self._add(name, "batch_norm", "num_batches_tracked", (), ZEROS, dtype="int64", trainable=False)

    def param(self, name: str, shape, init: Init = ZEROS) -> None:
        """A bare tensor owned directly by the current scope (leaf = ``name``)."""
        self.out.append(ParamSpec(self._join(name), tuple(int(s) for s in shape), "param", name, init))
