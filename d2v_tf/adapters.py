"""Big models on small machines, the Keras half: LoRA on the d2v dense layers (Keras'
``Dense.enable_lora``), weight quantization (``Dense.quantize``: int8, int4, float8) and the
``LayoutMap`` that shards the encoder's dense kernels under ``keras.distribution.ModelParallel``.
Which layers and how come from ``d2v_common.models.adapters``; the model methods in
``d2v_tf.base`` call these functions with the model's dense layers by module path.
"""

from __future__ import annotations

import contextlib
import gc

import keras

from d2v_common.models import adapters as common
from d2v_tf.layers import Embedding, Linear


def enable_lora(dense: dict[str, Linear], variables: dict[str, keras.Variable], spec, rank, target, alpha) -> dict:
    """Adapt the ``target`` dense layers with rank-``rank`` LoRA and freeze every other
    backbone weight (the head trains in full). Returns the record ``get_config`` keeps."""
    rank = common.check_lora_rank(rank)
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise ValueError(f"enable_lora(alpha): a positive number (the delta is scaled by alpha / rank), got {alpha!r}")
    head = {m for m in dense if common.is_head(m, spec.base_prefix, spec.is_base_model)}
    picked = common.lora_layers(list(dense), target, head)
    already = [m for m in picked if dense[m].lora_enabled]
    if already:
        raise ValueError(f"enable_lora: LoRA is on already for {already[:3]}; it is enabled once per model")
    for module in picked:
        dense[module].enable_lora(rank, lora_alpha=alpha)
    freeze_backbone(variables, spec)
    return {"rank": rank, "alpha": alpha, "layers": picked}


def freeze_backbone(variables: dict[str, keras.Variable], spec) -> None:
    """Every spec variable outside the task head stops training (LoRA's own stay trainable)."""
    for path, variable in variables.items():
        if not common.is_head(path.rsplit(".", 1)[0], spec.base_prefix, spec.is_base_model):
            variable.trainable = False


def quantizable(layer) -> bool:
    """The layers ``model.quantize`` converts by default: the dense layers (embedding tables
    are lookups; quantize them with ``filters``)."""
    return isinstance(layer, Linear)


def quantized_layers(leaves: dict[str, keras.layers.Layer]) -> dict[str, str]:
    """{module path: quantization mode} of the quantized d2v dense and embedding layers."""
    return {
        path: layer.quantization_mode
        for path, layer in leaves.items()
        if isinstance(layer, (Linear, Embedding)) and layer.quantization_mode is not None
    }


@contextlib.contextmanager
def one_garbage_collection():
    """Within the block ``gc.collect()`` does nothing; one collection runs at its end. Keras'
    ``Layer.__delattr__`` collects after every variable it removes (quantize drops each float
    kernel), a full pass over the process' heap per dense layer."""
    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        collect()


def layout_map(device_mesh, model_parallel_dim_name: str = "model") -> keras.distribution.LayoutMap:
    """Column-parallel kernels (and biases) for the projections into a wider space, row-parallel
    kernels for the projections back (``d2v_common.models.adapters``); the rest replicated.
    Keys are regexes on Keras variable paths (``<module path>/kernel``)."""
    model = model_parallel_dim_name
    layouts = keras.distribution.LayoutMap(device_mesh)
    layouts[common.COLUMN_PARALLEL + "/kernel"] = (None, model)
    layouts[common.COLUMN_PARALLEL + "/bias"] = (model,)
    layouts[common.ROW_PARALLEL + "/kernel"] = (model, None)
    return layouts
