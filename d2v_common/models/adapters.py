"""Big models on small machines, the framework-neutral half: which dense layers LoRA adapts,
which weights stay trainable, how the encoder's dense kernels shard for model parallelism,
and the error texts. Names are module paths of the weight spec (``encoder.layer.0.attention.
self.query``); the Keras side (``d2v_tf.adapters``) applies them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# LoRA targets by name: the last module names of the dense layers each choice adapts. The
# query/value default is keras-hub's (and the LoRA paper's); data2vec 2.0 fuses q, k and v in
# one ``qkv_proj``, adapted whole.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "query_value": ("query", "value", "q_proj", "v_proj", "qkv_proj"),
    "attention": ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv_proj"),
    "all": (),  # every dense layer of the backbone
}
DEFAULT_LORA_TARGET = "query_value"

# Where the backbone's encoder layers sit (1.0 text/vision ``layer``, audio and 2.0 ``layers``,
# 2.0 vision's ``prenet_layers``). Whole-path patterns (Keras' LayoutMap uses ``re.fullmatch``).
_ENCODER_LAYER = r"(?:.*\.)?encoder\.(?:layer|layers|prenet_layers)\.\d+\."
# Megatron-style tensor parallelism: the projections into a wider space shard their output
# columns, the projections back shard their input rows, so each block needs one all-reduce.
COLUMN_PARALLEL = _ENCODER_LAYER + r".*(?:query|key|value|[qkv]_proj|qkv_proj|intermediate\.dense|intermediate_dense)"
ROW_PARALLEL = _ENCODER_LAYER + r".*(?:output\.dense|out_proj|output_dense)"


def check_lora_rank(rank) -> int:
    """``rank`` as an int, or a ValueError saying what LoRA needs."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"enable_lora(rank): the rank must be a positive integer (8 or 16 are usual), got {rank!r}")
    return rank


def is_head(module: str, base_prefix: str, is_base_model: bool) -> bool:
    """Whether a spec module path belongs to the task head (kept trainable under LoRA): what
    sits outside the backbone's attribute (``data2vec_text`` ...); a bare model has no head."""
    return not is_base_model and not (module == base_prefix or module.startswith(base_prefix + "."))


def lora_layers(dense_modules: Iterable[str], target, head: set[str]) -> list[str]:
    """The dense layers (module paths) that ``target`` picks: a ``LORA_TARGETS`` name, or a
    list of names each matching a module path's end (``"query"``, ``"attention.output.dense"``)
    or a whole path. Head layers are never adapted (they train in full)."""
    candidates = [m for m in dense_modules if m not in head]
    if isinstance(target, str):
        if target not in LORA_TARGETS:
            raise ValueError(f"enable_lora(target={target!r}): pick one of {sorted(LORA_TARGETS)} "
                             "or give a list of layer names (e.g. ['query', 'value'])")
        names = LORA_TARGETS[target]
        if not names:
            return candidates
    elif isinstance(target, (list, tuple)) and target and all(isinstance(n, str) for n in target):
        names = tuple(target)
    else:
        raise TypeError(f"enable_lora(target=...): a name from {sorted(LORA_TARGETS)} or a list of layer names, "
                        f"got {target!r}")
    picked = [m for m in candidates if any(m == n or m.endswith("." + n) for n in names)]
    if not picked:
        raise ValueError(f"enable_lora(target={target!r}) matches no dense layer of the backbone; "
                         f"its dense layers end in {sorted({m.rsplit('.', 1)[-1] for m in candidates})}")
    return picked


def layout_role(module: str) -> str | None:
    """``"column"``, ``"row"`` or None (replicated) for a dense layer's module path."""
    if re.fullmatch(COLUMN_PARALLEL, module):
        return "column"
    if re.fullmatch(ROW_PARALLEL, module):
        return "row"
    return None
