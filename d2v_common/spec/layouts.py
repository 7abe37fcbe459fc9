"""Layout rules: how each kind of tensor looks outside the canonical (PyTorch) layout.

Two other layouts exist:

* **Keras** - d2v's Keras models name every variable ``<module path>.<keras leaf>`` (the same
  module path as PyTorch) and store kernels in Keras order;
* **HF tf_model.h5** - HF's TF checkpoint: ``<h5 module path>/<keras leaf>:0`` datasets, kernels
  in Keras order.

Each kind has one rule (leaf rename + axis permutation). Every mapping, in both directions, is
derived from a ``WeightSpec`` and these rules; nothing here lists parameter names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from d2v_common.models.checks import snake_case
from d2v_common.spec import FAMILIES
from d2v_common.spec.core import ParamSpec, WeightSpec


@dataclass(frozen=True)
class LeafRule:
    keras_leaf: str
    # Axis order taking the PyTorch array to the Keras array (None: same layout).
    perm: tuple[int, ...] | None = None
    # Present in HF's tf_model.h5 ``weight_names`` (False: PyTorch-only, written unlisted).
    in_hf_h5: bool = True

    @property
    def inverse_perm(self) -> tuple[int, ...] | None:
        return None if self.perm is None else tuple(int(i) for i in np.argsort(self.perm))


_BIAS = LeafRule("bias")
LEAF_RULES: dict[tuple[str, str], LeafRule] = {
    # Dense: PT (out, in) -> Keras (in, out).
    ("linear", "weight"): LeafRule("kernel", (1, 0)),
    ("linear", "bias"): _BIAS,
    # Conv1D (grouped too): PT (out, in/groups, k) -> Keras (k, in/groups, out).
    ("conv1d", "weight"): LeafRule("kernel", (2, 1, 0)),
    ("conv1d", "bias"): _BIAS,
    # Conv2D: PT (out, in, kh, kw) -> Keras (kh, kw, in, out).
    ("conv2d", "weight"): LeafRule("kernel", (2, 3, 1, 0)),
    ("conv2d", "bias"): _BIAS,
    # Conv2DTranspose: PT (in, out, kh, kw) -> Keras (kh, kw, out, in): the same permutation.
    ("conv_transpose2d", "weight"): LeafRule("kernel", (2, 3, 1, 0)),
    ("conv_transpose2d", "bias"): _BIAS,
    ("embedding", "weight"): LeafRule("embeddings"),
    ("layer_norm", "weight"): LeafRule("gamma"),
    ("layer_norm", "bias"): LeafRule("beta"),
    ("batch_norm", "weight"): LeafRule("gamma"),
    ("batch_norm", "bias"): LeafRule("beta"),
    ("batch_norm", "running_mean"): LeafRule("moving_mean"),
    ("batch_norm", "running_var"): LeafRule("moving_variance"),
    ("batch_norm", "num_batches_tracked"): LeafRule("num_batches_tracked", in_hf_h5=False),
}


def leaf_rule(p: ParamSpec) -> LeafRule:
    if p.kind == "param":
        return LeafRule(p.leaf)
    try:
        return LEAF_RULES[(p.kind, p.leaf)]
    except KeyError:
        raise ValueError(f"no layout rule for {p.kind}.{p.leaf} ({p.name})") from None


def keras_shape(p: ParamSpec) -> tuple[int, ...]:
    perm = leaf_rule(p).perm
    return p.shape if perm is None else tuple(p.shape[i] for i in perm)


def to_keras_array(p: ParamSpec, array: np.ndarray) -> np.ndarray:
    """Canonical array -> Keras / h5 layout (a transposed copy, or the array itself)."""
    check_shape(p, array.shape)
    perm = leaf_rule(p).perm
    return array if perm is None else np.ascontiguousarray(np.transpose(array, perm))


def keras_array(p: ParamSpec, value) -> np.ndarray:
    """A canonical tensor (an array, or a checkpoint tensor read lazily) -> Keras layout.

    A lazily read tensor whose file already stores the Keras layout (HF's ``tf_model.h5``)
    offers ``read_keras_layout()``: it is read as stored, with no transpose to the canonical
    layout and back (a transpose only moves values, so the result is the same bit for bit).
    """
    read_as_stored = getattr(value, "read_keras_layout", None)
    if read_as_stored is None:
        return to_keras_array(p, np.asarray(value))
    array = read_as_stored()
    if tuple(array.shape) != keras_shape(p):
        raise ValueError(f"{p.name}: Keras/h5 tensor has shape {tuple(array.shape)}, expected {keras_shape(p)}")
    return array


def from_keras_array(p: ParamSpec, array: np.ndarray) -> np.ndarray:
    """Keras / h5 layout -> canonical array."""
    rule = leaf_rule(p)
    if tuple(array.shape) != keras_shape(p):
        raise ValueError(
            f"{p.name}: Keras/h5 tensor has shape {tuple(array.shape)}, expected {keras_shape(p)}"
        )
    return array if rule.perm is None else np.ascontiguousarray(np.transpose(array, rule.inverse_perm))


def check_shape(p: ParamSpec, shape) -> None:
    if tuple(shape) != p.shape:
        raise ValueError(f"{p.name}: got shape {tuple(shape)}, expected {p.shape}")


# ------------------------------------------------------------------------------ Keras names
def keras_name(p: ParamSpec) -> str:
    """The variable path d2v's Keras models use: module path + Keras leaf."""
    leaf = leaf_rule(p).keras_leaf
    return f"{p.module}.{leaf}" if p.module else leaf


def keras_names(spec: WeightSpec) -> dict[str, ParamSpec]:
    return {keras_name(p): p for p in spec}


# ---------------------------------------------------------------------------- HF h5 names
def h5_model_name(spec: WeightSpec) -> str:
    """First path component HF's TF classes write: Keras 2's default name for the TF class
    (``TFData2VecVisionModel`` -> ``tf_data2_vec_vision_model``)."""
    return snake_case("TF" + spec.architecture)


def h5_module_path(module: str, family: str) -> str:
    """Canonical dotted module path -> HF TF name path.

    List items become ``name_._i`` (Keras 2's naming of layer lists in HF's TF code) unless a
    family rule keeps them dotted; then dots become slashes.
    """
    for pattern, repl in FAMILIES[family].H5_MODULE_RULES:
        module = re.sub(pattern, repl, module)
    module = re.sub(r"\.(\d+)(?=\.|$)", r"_~_\1", module)
    return module.replace(".", "/").replace("~", ".")


def h5_name(p: ParamSpec, spec: WeightSpec) -> str:
    """Dataset name inside its group, without the model-name component: ``a/b/kernel:0``.

    HF's TF base models keep their main layer under the base prefix too, so bare-model
    names gain it here.
    """
    leaf = leaf_rule(p).keras_leaf
    module = p.module
    if spec.is_base_model:
        module = f"{spec.base_prefix}.{module}" if module else spec.base_prefix
    path = h5_module_path(module, spec.family) if module else ""
    return f"{path}/{leaf}:0" if path else f"{leaf}:0"


def h5_names(spec: WeightSpec) -> dict[str, ParamSpec]:
    return {h5_name(p, spec): p for p in spec.stored()}


def h5_layer_names(spec: WeightSpec) -> list[str]:
    """Top-level groups (HF's ``layer_names``) in order, weightless groups included."""
    groups: list[str] = []
    for p in spec.stored():
        group = h5_name(p, spec).split("/")[0]
        if group not in groups:
            groups.append(group)
    empties = FAMILIES[spec.family].H5_EMPTY_GROUPS.get(spec.architecture, ())
    for before, group in empties:
        position = groups.index(before) if before in groups else len(groups)
        groups.insert(position, group)
    return groups


def canonical_name_of_h5(name: str) -> str:
    """The canonical (PyTorch) name an HF h5 dataset name most likely stands for, for messages
    about datasets no spec entry claims (``a/layer_._1/dense/kernel:0`` -> ``a.layer.1.dense.weight``)."""
    path = name[:-2] if name.endswith(":0") else name
    parts = path.split("/")
    leaves = {rule.keras_leaf: leaf for (_, leaf), rule in LEAF_RULES.items()}
    parts[-1] = leaves.get(parts[-1], parts[-1])
    return re.sub(r"_\._(\d+)", r".\1", ".".join(parts))
