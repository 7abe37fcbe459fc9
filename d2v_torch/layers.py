"""Blocks shared by the three PyTorch families: activations, attention, drop path, resizing.

The Keras twin of this file is ``d2v_tf/layers.py``; the two are kept section for section.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from d2v_common.configs import ACTIVATIONS
from d2v_common.losses import infer_problem_type

# --------------------------------------------------------------------------- activations


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATION_FNS = {
    "gelu": F.gelu,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10.0, 10.0),
    "gelu_new": _gelu_tanh,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "linear": lambda x: x,
    "mish": F.mish,
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
assert set(_ACTIVATION_FNS) == set(ACTIVATIONS)


class Activation(nn.Module):
    """An activation chosen by its HF name (the config validates the name)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = _ACTIVATION_FNS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- attention


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention on (B, H, T, D) tensors.

    ``bias`` is added to the scores (padding / causal masks as large negatives, relative
    position terms). Without attention weights or a head mask this runs the fused kernel;
    otherwise it computes the weights explicitly. Returns (context (B, T, H*D), weights).
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    p = dropout if training else 0.0
    if not need_weights and head_mask is None:
        if bias is not None:
            bias = bias.to(query.dtype)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=p, scale=scale)
        return merge_heads(context), None
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(weights, p, training) if p > 0 else weights
    if head_mask is not None:
        probs = probs * head_mask
    context = torch.matmul(probs, value)
    return merge_heads(context), weights if head_mask is None else probs


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) keep-mask (1 = attend) -> additive (B, 1, 1, S) bias: 0 or the dtype's minimum."""
    mask = mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def expand_head_mask(head_mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype) -> list:
    """HF's head mask: (heads,) or (layers, heads) of 1 = keep -> one (1, H, 1, 1) mask per layer."""
    if head_mask is None:
        return [None] * num_layers
    head_mask = torch.as_tensor(head_mask)
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    else:
        raise ValueError(f"head_mask must have shape (num_heads,) or (num_layers, num_heads), got {tuple(head_mask.shape)}")
    if head_mask.shape[0] != num_layers:
        raise ValueError(f"head_mask has {head_mask.shape[0]} layers, the model has {num_layers}")
    return list(head_mask.to(dtype))


# ------------------------------------------------------------------------------ drop path


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p``
    and rescale the survivors by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -------------------------------------------------------------------------------- losses


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over labels != ignore_index, computed in float32."""
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """HF's sequence/image classification loss: regression (MSE), single- or multi-label.

    Like HF, a config without ``problem_type`` gets one on first use (``d2v_common.losses``
    holds the rule), and later calls keep it.
    """
    if config.problem_type is None:
        config.problem_type = infer_problem_type(config.num_labels, str(labels.dtype).replace("torch.", ""))
    logits32 = logits.float()
    if config.problem_type == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits32.squeeze(), labels.float().squeeze())
        return F.mse_loss(logits32, labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits32.view(-1, config.num_labels), labels.view(-1).long())
    return F.binary_cross_entropy_with_logits(logits32, labels.float())
