"""Big models on small machines, the framework-neutral half: which dense layers LoRA adapts
(Keras' ``enable_lora``, peft's ``target_modules`` for torch), which weights stay trainable, how
the encoder's dense kernels shard for model parallelism, and the error texts. Names are module
paths of the weight spec (``encoder.layer.0.attention.self.query``).

The attention projections differ by family: 1.0 text and vision use BERT's ``query`` / ``key`` /
``value``, 1.0 audio uses wav2vec2's ``q_proj`` / ``k_proj`` / ``v_proj``, and data2vec 2.0
keeps fairseq's single fused ``qkv_proj`` (one projection for the three roles, so an adapter on
it adapts query, key and value together).
"""


from __future__ import annotations

import re
from collections.abc import Iterable

# role -> the module names that play it, in the order tried (the first one a model has wins)
ATTENTION_PROJECTION_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q_proj", "qkv_proj"),
    "key": ("key", "k_proj", "qkv_proj"),
    "value": ("value", "v_proj", "qkv_proj"),
}


def _names_of(*roles: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for role in roles for name in ATTENTION_PROJECTION_NAMES[role]))


# LoRA targets by name: the last module names of the dense layers each choice adapts. The
# query/value default is keras-hub's (and the LoRA paper's); data2vec 2.0 fuses q, k and v in
# one ``qkv_proj``, adapted whole.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "query_value": _names_of("query", "value"),
    "attention": _names_of("query", "key", "value"),
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


def lora_target_modules(parameter_names: Iterable[str], roles: Iterable[str] = ("query", "value")) -> list[str]:
    """The module names (last path part, as peft's ``target_modules`` takes them) that play
    ``roles`` in a model whose weights are ``parameter_names`` (its weight spec's names).

    Args:
        parameter_names: the model's tensor names (``encoder.layer.0.attention.self.query.weight``).
        roles: attention roles, from ``ATTENTION_PROJECTION_NAMES``.

    Returns:
        The distinct module names, in role order (``["qkv_proj"]`` for data2vec 2.0's fused projection).

    Raises:
        ValueError: an unknown role, or a model with none of the role's modules.
    """
    modules = {name.split(".")[-2] for name in parameter_names if "." in name}
    out: list[str] = []
    for role in roles:
        if role not in ATTENTION_PROJECTION_NAMES:
            raise ValueError(f"unknown attention role {role!r}; use one of {', '.join(ATTENTION_PROJECTION_NAMES)}")
        found = next((m for m in ATTENTION_PROJECTION_NAMES[role] if m in modules), None)
        if found is None:
            raise ValueError(f"the model has no {role} projection (looked for {', '.join(ATTENTION_PROJECTION_NAMES[role])})")
        if found not in out:
            out.append(found)
    return out
