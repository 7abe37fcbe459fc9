"""Blocks shared by the three PyTorch families: linear, activations, attention, drop path, losses.

The Keras twin of this file is ``d2v_tf/layers.py``; the two are kept section for section.
"""

from __future__ import annotations

import inspect
import math
import os
import platform
import weakref

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from d2v_common.configs import ACTIVATIONS
from d2v_common.models.losses import IGNORE_INDEX, check_label_range, infer_problem_type
from d2v_common.models.checks import TensorInfo, check_head_mask, dtype_name

# ------------------------------------------------------------------ gradient checkpointing

# torch.utils.checkpoint's options when gradient_checkpointing_enable() is given none: the
# non-reentrant mode torch recommends (HF's Trainer asks for it too).
DEFAULT_CHECKPOINT_OPTIONS = {"use_reentrant": False}
# The options torch.utils.checkpoint.checkpoint takes (preserve_rng_state comes through its **kwargs).
CHECKPOINT_ARGUMENTS = frozenset(
    name for name, p in inspect.signature(torch.utils.checkpoint.checkpoint).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
) | {"preserve_rng_state"}


def checkpoint_options(gradient_checkpointing_kwargs: dict | None) -> dict:
    """HF's ``gradient_checkpointing_kwargs`` checked against ``torch.utils.checkpoint.checkpoint``'s
    keyword arguments, over the defaults."""
    if gradient_checkpointing_kwargs is None:
        return dict(DEFAULT_CHECKPOINT_OPTIONS)
    if not isinstance(gradient_checkpointing_kwargs, dict):
        raise TypeError("gradient_checkpointing_kwargs must be a dict of torch.utils.checkpoint.checkpoint arguments "
                        f"(e.g. {{'use_reentrant': False}}), got {type(gradient_checkpointing_kwargs).__name__}")
    unknown = sorted(set(gradient_checkpointing_kwargs) - CHECKPOINT_ARGUMENTS)
    if unknown:
        raise TypeError(f"gradient_checkpointing_kwargs {unknown} are not arguments of "
                        f"torch.utils.checkpoint.checkpoint (it takes {', '.join(sorted(CHECKPOINT_ARGUMENTS))})")
    return {**DEFAULT_CHECKPOINT_OPTIONS, **gradient_checkpointing_kwargs}


def checkpointed(owner: nn.Module, layer: nn.Module, *args):
    """``layer(*args)``, recomputed in the backward pass with the options that
    ``gradient_checkpointing_enable`` gave ``owner`` (the encoder)."""
    options = getattr(owner, "checkpoint_options", DEFAULT_CHECKPOINT_OPTIONS)
    return torch.utils.checkpoint.checkpoint(layer, *args, **options)


# ----------------------------------------------------------------------------- primitives

# Inference matmuls of a large enough Linear run on oneDNN's kernel directly:
# - float32, on CPUs not made by Intel: torch sends CPU float32 matmuls to MKL, which there takes
#   a narrower vector path (half oneDNN's speed on an AVX-512 AMD EPYC); oneDNN picks the widest
#   unit. On Intel CPUs MKL is the faster of the two (4-15 % on an AVX-512 Xeon), so it keeps them.
# - bfloat16: F.linear already uses oneDNN but re-lays the weight out for it on every call
#   (5-30 % of the GEMM); here the weight is laid out once and cached (see Linear).
# Anything that needs gradients uses F.linear. D2V_ONEDNN_LINEAR=0 turns all of this off.
ONEDNN_LINEAR = os.environ.get("D2V_ONEDNN_LINEAR", "1") != "0"
# Below this many multiply-adds oneDNN's fixed cost per call (about 10 us) outweighs its speed.
ONEDNN_MIN_MACS = 1 << 22


def _onednn_ops():
    try:
        if torch.backends.mkldnn.is_available():
            ops = torch.ops.mkldnn
            return ops._linear_pointwise, ops._reorder_linear_weight, bool(ops._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without these ops
        pass
    return None, None, False


_ONEDNN_LINEAR_OP, _ONEDNN_PACK_WEIGHT, _ONEDNN_BF16 = _onednn_ops()


def _cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``, ...), or "" where unknown."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    processor = platform.processor()  # Windows names the vendor here
    return "GenuineIntel" if "GenuineIntel" in processor else ""


_ONEDNN_FLOAT32 = _cpu_vendor() != "GenuineIntel"


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if not ONEDNN_LINEAR or _ONEDNN_LINEAR_OP is None:
        return False
    dtype = x.dtype
    if not ((dtype == torch.float32 and _ONEDNN_FLOAT32) or (dtype == torch.bfloat16 and _ONEDNN_BF16)):
        return False
    # plain dense CPU tensors only: no tensor subclasses (fake, functorch), no tracing
    if type(x) is not torch.Tensor or x.device.type != "cpu" or x.layout != torch.strided:
        return False
    if weight.dtype != dtype or weight.device.type != "cpu" or weight.layout != torch.strided or weight.dim() != 2:
        return False
    if bias is not None and (bias.dtype != dtype or bias.device.type != "cpu"):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False  # the kernel has no backward
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose CPU inference runs on oneDNN.

    In bfloat16 the weight is kept a second time in oneDNN's GEMM layout, refreshed whenever
    the weight changes through autograd-visible means (optimizer steps, ``load_state_dict``,
    ``.to()``, in-place ops under ``no_grad``); an in-place change made through ``.data``
    bypasses the version counter this relies on and is not seen.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if _use_onednn(x, weight, self.bias):
            if weight.dtype == torch.float32:  # runs as fast from the plain layout
                return _ONEDNN_LINEAR_OP(x, weight, self.bias, "none", [], "")
            packed = self._packed_weight()
            if packed is not None:
                return _ONEDNN_LINEAR_OP(x, packed, self.bias, "none", [], "")
        return F.linear(x, weight, self.bias)

    def _packed_weight(self) -> torch.Tensor | None:
        w = self.weight
        try:
            key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
        except RuntimeError:  # an inference-mode tensor has no version counter: no cache
            return None
        cached = self.__dict__.get("_onednn_packed")
        if cached is None or cached[0] != key or cached[1]() is not w:
            cached = (key, weakref.ref(w), _ONEDNN_PACK_WEIGHT(w.detach(), None))
            self.__dict__["_onednn_packed"] = cached
        return cached[2]

    def _apply(self, fn, recurse=True):
        # .to() / .float() / .bfloat16() make new weights, possibly at a freed weight's address
        self.__dict__.pop("_onednn_packed", None)
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_onednn_packed", None)  # a cache (and oneDNN tensors do not pickle)
        return state


def conv1d_time_major(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for (B, C, T) ``x``; on CPU, where it pays, the result is stored time-major
    ((B, T', C') memory), so the LayerNorm over channels that follows each audio conv gets its
    (B, T', C') input by a free transpose instead of a copy."""
    if x.device.type != "cpu" or is_tracing():  # traced graphs (ONNX, pt2) get the plain conv
        return conv(x)
    if conv.in_channels == 1 and conv.groups == 1 and conv.padding == (0,) and conv.dilation == (1,):
        # One input channel (the raw waveform): a convolution kernel has almost no work per
        # output and runs at a few GFLOP/s; windows x weights as one matmul is 2x faster, with
        # the same sums (bit-identical in float32).
        windows = x[:, 0].unfold(1, conv.kernel_size[0], conv.stride[0])  # (B, T', K), a view
        return F.linear(windows, conv.weight[:, 0], conv.bias).transpose(1, 2)
    if x.dtype in (torch.bfloat16, torch.float16):
        # oneDNN's channels-last kernel, 1.4x faster with the copies it saves. Not in float32:
        # its blocked sums round 2-4x more than torch's kernel (d2v keeps float32 at HF's 1e-5).
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, C, 1, T): free if time-major
        y = F.conv2d(
            x4, conv.weight.unsqueeze(2), conv.bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
            dilation=(1, conv.dilation[0]), groups=conv.groups,
        )
        return y.squeeze(2)
    return conv(x)


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


# ------------------------------------------------------------------- transformer sub-blocks
# The feed-forward and projection pieces every family's encoder layer is made of; the family
# classes (``Data2VecTextIntermediate`` ...) keep HF's names and only pick the sizes.


class DenseActivation(nn.Module):
    """Linear -> activation (a feed-forward block's first half)."""

    def __init__(self, in_features: int, out_features: int, activation: str):
        super().__init__()
        self.dense = Linear(in_features, out_features)
        self.act = Activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class DenseDropout(nn.Module):
    """Linear -> dropout (a projection back to the hidden size, residual added by the caller)."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.dense = Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(x))


# ----------------------------------------------------------------------------- attention


def is_tracing() -> bool:
    """True under ``torch.jit.trace``, ``torch.compile`` and ``torch.export``: checks that need
    the tensors' values (id ranges, per-row mask lengths) are skipped there, since a traced
    graph cannot branch on data; shape checks still run."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


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
    position terms). Without attention weights or a head mask this runs the fastest path
    (torch's fused kernel, or batched matmuls in reduced precision on CPU); otherwise it
    computes the weights explicitly. Returns (context (B, T, H*D), weights).
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    p = dropout if training else 0.0
    if not need_weights and head_mask is None:
        if bias is not None:
            bias = bias.to(query.dtype)
        # exported programs too: the ONNX translation decomposes SDPA with a (B, 1, T, T) mask
        # into a view its symbolic strides reject; two matmuls translate cleanly
        if _matmul_attention_is_faster(query, key, p) or torch.compiler.is_exporting():
            return _matmul_attention(query, key, value, bias, p, scale), None
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


def _matmul_attention_is_faster(query: torch.Tensor, key: torch.Tensor, dropout: float = 0.0) -> bool:
    """On CPU in bfloat16 / float16, torch's fused kernel works through float32 tiles and runs
    about 2x slower than two batched matmuls and a softmax for up to ~1k tokens; beyond that
    (or when the scores would take much memory) the fused kernel wins. With attention dropout
    the CPU kernel is not fused at all: torch falls back to its own matmuls, which also scale q
    and k separately and check for fully masked rows, so ours are cheaper in any dtype."""
    b, h, t, _ = query.shape
    s = key.shape[2]
    return (
        query.device.type == "cpu"
        and (query.dtype in (torch.bfloat16, torch.float16) or dropout > 0)
        and t * s <= 1 << 20
        and b * h * t * s <= 1 << 26
    )


def _matmul_attention(query, key, value, bias, dropout: float, scale: float) -> torch.Tensor:
    """Softmax(q k^T * scale + bias) v as batched matmuls (float32 accumulation, float32 softmax
    inside torch's kernels); returns (B, T, H*D)."""
    b, h, t, d = query.shape
    s = key.shape[2]
    q = query.reshape(b * h, t, d)
    k = key.reshape(b * h, s, d).transpose(1, 2)
    if bias is None or (bias.shape[1] == 1 and bias.shape[2] == 1):
        scores = torch.baddbmm(q.new_zeros(()), q, k, beta=0.0, alpha=scale)
        if bias is not None:  # a padding row (B, 1, 1, S): broadcast in place, no (B*H, T, S) copy
            scores.view(b, h, t, s).add_(bias)
    else:  # a full (.., H, T, S) bias (relative positions) is summed inside the GEMM
        scores = torch.baddbmm(bias.expand(b, h, t, s).reshape(b * h, t, s), q, k, alpha=scale)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = F.dropout(probs, dropout, True)
    return merge_heads(torch.bmm(probs, value.reshape(b * h, s, d)).view(b, h, t, d))


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) keep-mask (1 = attend) -> additive (B, 1, 1, S) bias: 0 or the dtype's minimum."""
    mask = mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def expand_head_mask(head_mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype) -> list:
    """HF's head mask: (heads,) or (layers, heads) of 1 = keep -> one (1, H, 1, 1) mask per layer."""
    if head_mask is None:
        return [None] * num_layers
    head_mask = torch.as_tensor(head_mask)
    check_head_mask(tuple(head_mask.shape), num_layers)
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_layers, -1, -1, -1, -1)
    else:
        head_mask = head_mask[:, None, :, None, None]
    return list(head_mask.to(dtype))


def tensor_info(tensor: torch.Tensor) -> TensorInfo:
    """Shape, dtype name and values of a tensor, for the checks in ``d2v_common``; no values
    while tracing (a traced graph cannot branch on data, so only shape checks run)."""
    values = None if is_tracing() else tensor.detach().cpu().numpy()
    return TensorInfo(tuple(tensor.shape), dtype_name(tensor.dtype), values)


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


def check_labels_in_range(labels: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                          name: str = "labels") -> None:
    """Class-id labels in [0, num_classes) or ``ignore_index``, else ``d2v_common``'s ValueError
    (torch would fail with an index error, or a device-side assert on a GPU). Skipped under
    tracing, where the values are unknown."""
    if not is_tracing():
        check_label_range(name, labels.detach().cpu().numpy(), num_classes, ignore_index)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy (classes on axis 1, as in torch) over labels != ignore_index, in
    float32; labels outside the classes are refused (``check_labels_in_range``)."""
    check_labels_in_range(labels, logits.shape[1] if logits.dim() > 1 else logits.shape[0], ignore_index)
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """HF's sequence/image classification loss: regression (MSE), single- or multi-label.

    Like HF, a config without ``problem_type`` gets one on first use (``d2v_common.models.losses``
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
        return cross_entropy(logits32.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits32, labels.float())
