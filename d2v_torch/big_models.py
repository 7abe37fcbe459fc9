"""Fine-tuning large checkpoints on small machines, PyTorch side: LoRA target modules for
``peft``, dynamic int8 quantisation and FSDP2 sharding of the encoder blocks
(docs/training.md, "Big models on small machines")."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from d2v_common.models.adapters import lora_target_modules as _target_modules


# ------------------------------------------------------------------------------- LoRA (peft)
def lora_target_modules(model: nn.Module, roles: Iterable[str] = ("query", "value")) -> list[str]:
    """The module names to pass as peft's ``LoraConfig(target_modules=...)`` for ``roles``.

    1.0 text and vision name the projections ``query`` / ``value`` (HF's names, so
    ``target_modules=["query", "value"]`` works as is), 1.0 audio ``q_proj`` / ``v_proj`` and
    data2vec 2.0 has one fused ``qkv_proj`` (LoRA on it adapts query, key and value together).

    Args:
        model: a d2v PyTorch model.
        roles: attention roles: ``"query"``, ``"key"``, ``"value"``.

    Returns:
        Module names, e.g. ``["q_proj", "v_proj"]``.

    Examples:
        >>> from peft import LoraConfig, get_peft_model  # doctest: +SKIP
        >>> lora = get_peft_model(model, LoraConfig(r=8, target_modules=lora_target_modules(model)))  # doctest: +SKIP
    """
    return _target_modules(model.state_dict().keys(), roles)
