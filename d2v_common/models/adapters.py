"""Which modules adapters (LoRA) attach to, by role, in every family's own names.

The checkpoint names differ by family: 1.0 text and vision use BERT's ``query`` / ``key`` /
``value``, 1.0 audio uses wav2vec2's ``q_proj`` / ``k_proj`` / ``v_proj``, and data2vec 2.0
keeps fairseq's single fused ``qkv_proj`` (one projection for the three roles, so an adapter
on it adapts query, key and value together). Both frameworks pick their layers from here.
"""

from __future__ import annotations

from collections.abc import Iterable

# role -> the module names that play it, in the order tried (the first one a model has wins)
ATTENTION_PROJECTION_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q_proj", "qkv_proj"),
    "key": ("key", "k_proj", "qkv_proj"),
    "value": ("value", "v_proj", "qkv_proj"),
}


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
