"""Fine-tuning large checkpoints on small machines, PyTorch side: LoRA target modules for
``peft``, dynamic int8 quantisation and FSDP2 sharding of the encoder blocks
(docs/training.md, "Big models on small machines")."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from d2v_common.models.adapters import lora_target_modules as _target_modules
from d2v_torch.layers import Linear


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


# ----------------------------------------------------------------------- dynamic int8
class _DynamicInt8Linear(nnqd.Linear):
    """torch's dynamic int8 Linear, made from d2v's ``Linear`` (an ``nn.Linear`` subclass, which
    torch's converter refuses: it matches module types exactly)."""

    _FLOAT_MODULE = Linear

    @classmethod
    def from_float(cls, mod, use_precomputed_fake_quant=False):
        plain = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        plain.weight, plain.bias, plain.qconfig = mod.weight, mod.bias, mod.qconfig
        return nnqd.Linear.from_float(plain, use_precomputed_fake_quant=use_precomputed_fake_quant)


# Linear layers whose weight their parent reads directly (the x-vector TDNN uses it as a conv
# kernel): they stay float.
_WEIGHT_READERS = ("kernel",)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Linear layers run with int8 weights and dynamically quantised
    activations (CPU inference; ``torch.ao.quantization.quantize_dynamic`` with qint8).

    Use this rather than ``quantize_dynamic(model, {nn.Linear})``: d2v's Linear is an
    ``nn.Linear`` subclass, and torch matches exact types, so that call quantises nothing.

    Save and load the way PyTorch does for quantised modules: ``torch.save(q.state_dict(),
    path)``, then quantise a freshly built model of the same config and ``load_state_dict``.

    Args:
        model: a d2v PyTorch model (put in eval mode; the original is left as it is).

    Returns:
        The quantised copy.

    Examples:
        >>> q = quantize_dynamic_int8(Data2VecTextModel.from_pretrained("path"))  # doctest: +SKIP
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    mapping = {**get_default_dynamic_quant_module_mappings(), Linear: _DynamicInt8Linear}
    qconfig = {name: default_dynamic_qconfig for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.split(".")[-1] not in _WEIGHT_READERS}
    return quantize_dynamic(model.eval(), qconfig, dtype=torch.qint8, mapping=mapping, inplace=False)


# ------------------------------------------------------------------------------ FSDP2
# The ModuleLists holding the transformer blocks, by their name under the backbone:
# 1.0 text and vision ``encoder.layer``, 1.0 audio and 2.0 ``encoder.layers`` (2.0 also runs
# its modality-specific ``encoder.prenet_layers`` first).
ENCODER_BLOCK_LISTS = ("encoder.layer", "encoder.layers", "encoder.prenet_layers")


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in order (the units FSDP shards one by one)."""
    return [block for name, module in model.named_modules() if isinstance(module, nn.ModuleList)
            and any(name == n or name.endswith("." + n) for n in ENCODER_BLOCK_LISTS) for block in module]


def shard_for_fsdp(model: nn.Module, **fully_shard_kwargs) -> nn.Module:
    """Shard ``model`` with FSDP2: ``torch.distributed.fsdp.fully_shard`` on every encoder block,
    then on the model itself (embeddings, heads and tied weights go with the root), as
    transformers' FSDP2 wrapping does. Call it inside an initialised process group.

    Args:
        model: a d2v PyTorch model (every rank builds it the same way, e.g. from one checkpoint).
        **fully_shard_kwargs: passed to each ``fully_shard`` call (``mesh``, ``mp_policy``,
            ``reshard_after_forward``, ...).

    Returns:
        ``model``, sharded in place (its parameters are now ``DTensor`` shards).

    Examples:
        >>> torch.distributed.init_process_group("gloo")  # doctest: +SKIP
        >>> model = shard_for_fsdp(Data2VecTextForSequenceClassification.from_pretrained("path"))  # doctest: +SKIP
    """
    from torch.distributed.fsdp import fully_shard

    blocks = encoder_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no encoder blocks under {', '.join(ENCODER_BLOCK_LISTS)}")
    for block in blocks:
        fully_shard(block, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model
