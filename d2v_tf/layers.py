"""Blocks shared by the three Keras families, twin of ``d2v_torch/layers.py``.

The primitive layers take PyTorch-style constructor arguments (``Linear(in, out)``) and create
their variables in ``__init__`` (shapes come from the config), named with Keras leaves
(``kernel``, ``bias``, ``gamma`` ...). A model's variable paths are its attribute paths, so they
equal the weight spec's module paths (see ``d2v_tf.base.named_variables``).

Convolutions run channels-last (TensorFlow's CPU kernels want NHWC / NWC). Kernels that differ
between Keras backends come from ``d2v_tf.backend``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import keras
import numpy as np
from keras import ops

from d2v_common.configs import ACTIVATIONS
from d2v_common.models.interpolation import resize_matrices
from d2v_common.models.losses import (
    IGNORE_INDEX, check_label_range, infer_problem_type, label_range_message, label_range_summary,
)
from d2v_common.models.checks import TensorInfo, check_head_mask, dtype_name
from d2v_tf import backend
from d2v_tf.checkpointing import block_uniform, in_seeded_block

# ----------------------------------------------------------------- variables made from loaded values
# ``from_pretrained`` builds the model inside ``deferred_variables()``: ``add_weight`` then only
# declares each variable (Keras holds it uninitialised in a ``keras.StatelessScope``) and the
# loader hands every variable its checkpoint tensor (``PendingVariables.create``), so each one is
# created once, from its loaded value: no zeros or random draws that loading would overwrite,
# and no second copy of the weights (a lazily read checkpoint is read one tensor at a time).
_BUILD = threading.local()


class PendingValue:
    """The initializer of a variable declared under ``deferred_variables()``: it returns the
    value the loader handed over (``source``, called once), or zeros if none came."""

    def __init__(self, pending: "PendingVariables"):
        self.pending, self.source = pending, None

    def __call__(self, shape, dtype=None):
        source, self.source = self.source, None
        if source is not None:
            try:
                return source()
            except Exception as e:  # noqa: BLE001 - Keras is creating every pending variable: finish, then raise
                self.pending.errors.append(e)
        return np.zeros(shape, dtype)


class PendingVariables:
    """The variables one ``deferred_variables()`` build declared, and their initializers."""

    def __init__(self):
        self.values: dict[int, PendingValue] = {}
        self.errors: list[Exception] = []

    def declare(self, add_weight, *args, **kwargs):
        initializer = PendingValue(self)
        variable = add_weight(*args, **{**kwargs, "initializer": initializer})
        self.values[id(variable)] = initializer
        return variable

    def give(self, variable, source) -> bool:
        """Hand ``variable`` its value (``source()`` -> array); False if it is not pending here."""
        initializer = self.values.get(id(variable))
        if initializer is None:
            return False
        initializer.source = source
        return True

    def create(self) -> None:
        """Create every pending variable from its value (Keras initialises the variables declared
        in a stateless scope when the next outermost one closes), one at a time."""
        with keras.StatelessScope():
            pass
        self.values.clear()
        if self.errors:
            raise self.errors[0]


@contextlib.contextmanager
def deferred_variables():
    """Build a model whose variables are created later from loaded values (see above); the
    model takes the ``PendingVariables`` with ``pending_variables()`` in ``post_init``."""
    scope = keras.StatelessScope(initialize_variables=False)
    scope.__enter__()
    if scope.original_scope is not None:  # inside a caller's stateless scope: build as usual
        scope.__exit__(None, None, None)
        yield None
        return
    previous = getattr(_BUILD, "pending", None)
    _BUILD.pending = PendingVariables()
    try:
        yield _BUILD.pending
    finally:
        _BUILD.pending = previous
        scope.__exit__(None, None, None)


def pending_variables() -> PendingVariables | None:
    """The ``PendingVariables`` of the ``deferred_variables()`` build in progress, if any."""
    return getattr(_BUILD, "pending", None)


def add_weight_maybe_deferred(add_weight, *args, **kwargs):
    """``add_weight``, or only a declaration under ``deferred_variables()``."""
    pending = pending_variables()
    return add_weight(*args, **kwargs) if pending is None else pending.declare(add_weight, *args, **kwargs)


# --------------------------------------------------------------------------- primitives


class DeferredWeights(backend.LayerHooks):
    """Mixin of every d2v Keras layer: ``add_weight`` only declares the variable under
    ``deferred_variables()`` (see above)."""

    def add_weight(self, *args, **kwargs):
        return add_weight_maybe_deferred(super().add_weight, *args, **kwargs)


class Layer(DeferredWeights, keras.layers.Layer):
    """Base of every d2v Keras layer: weights are created in ``__init__`` (their shapes come
    from the config), so the layer is built from the start (``model.quantize`` and
    ``enable_lora`` refuse layers that are not built)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built = True

    def build(self, *args, **kwargs):
        self.built = True


class Linear(DeferredWeights, keras.layers.Dense):
    """A ``keras.layers.Dense`` sized like ``torch.nn.Linear``: ``kernel`` (in, out) and
    ``bias`` (out,), created in ``__init__``. It keeps Dense's hooks (``enable_lora``,
    ``quantize``, ``.keras`` saving); the plain float path runs as one 2-D GEMM plus the bias
    (``d2v_tf.backend.linear``).

    Args:
        in_features: the input width.
        out_features: the output width.
        bias: whether the layer adds a bias.
    """

    # spec leaf -> attribute holding the variable (Dense keeps its kernel private: ``kernel``
    # is a property that adds a LoRA delta)
    SPEC_ATTRIBUTES = {"kernel": "_kernel", "bias": "bias"}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        super().__init__(out_features, use_bias=bias, kernel_initializer="zeros", **kwargs)
        self.in_features = in_features
        self.build((None, in_features))
        self.input_spec = None  # the shapes come from the config; no per-call check

    def call(self, x, training=None):
        if self.lora_enabled:
            return super().call(x)
        return backend.linear(x, self._kernel, self.bias)

    def quantize(self, mode=None, type_check=True, config=None):
        # Dense refuses its subclasses unless told otherwise (``type_check``)
        if type_check and type(self) is not Linear:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def float_kernel(self) -> np.ndarray:
        """The (in, out) kernel as float numpy: dequantized, LoRA delta merged (the value
        ``save_pretrained`` writes); the stored variable itself when neither applies."""
        mode = self.quantization_mode
        if mode in (None, "float8"):
            kernel = ops.convert_to_numpy(self._kernel)
        elif mode == "int8":
            kernel = ops.convert_to_numpy(self._kernel).astype("float32") / ops.convert_to_numpy(self.kernel_scale)
        elif mode == "int4" and getattr(self, "_int4_block_size", None) in (None, -1):
            from keras import quantizers

            unpacked = quantizers.unpack_int4(self._kernel, self._orig_output_dim, axis=-1)
            kernel = ops.convert_to_numpy(unpacked).astype("float32") / ops.convert_to_numpy(self.kernel_scale)
        else:
            raise ValueError(f"{self.name}: cannot read back a float kernel from quantization mode {mode!r}; "
                             "save it with model.save('model.keras') instead")
        if self.lora_enabled:
            delta = ops.convert_to_numpy(self.lora_kernel_a) @ ops.convert_to_numpy(self.lora_kernel_b)
            kernel = (kernel.astype("float32") + (self.lora_alpha / self.lora_rank) * delta).astype(kernel.dtype)
        return kernel

    def spec_values(self) -> dict:
        """Numpy values by spec leaf, as ``save_pretrained`` writes them."""
        out = {"kernel": self.float_kernel()}
        if self.bias is not None:
            out["bias"] = ops.convert_to_numpy(self.bias)
        return out

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        return {**config, "in_features": self.in_features, "out_features": self.units, "bias": self.use_bias}


class Embedding(DeferredWeights, keras.layers.Embedding):
    """A ``keras.layers.Embedding`` of ``num_embeddings`` rows of width ``dim``, created in
    ``__init__``; it keeps Embedding's hooks (``enable_lora``, ``quantize``). The float path
    looks up with a dense table gradient (``d2v_tf.backend.embedding_lookup``).

    Args:
        num_embeddings: the number of rows (vocabulary size).
        dim: the width of each row.
    """

    SPEC_ATTRIBUTES = {"embeddings": "_embeddings"}

    def __init__(self, num_embeddings: int, dim: int, **kwargs):
        super().__init__(num_embeddings, dim, embeddings_initializer="zeros", **kwargs)
        self.autocast = True  # the table is read in the compute dtype, as every other d2v weight
        self.build()

    @property
    def num_embeddings(self) -> int:
        return self.input_dim

    @num_embeddings.setter
    def num_embeddings(self, value: int) -> None:
        self.input_dim = value

    def call(self, ids):
        return backend.embedding_lookup(self.embeddings, ops.cast(ids, "int32"))

    def quantize(self, mode=None, type_check=True, config=None):
        if type_check and type(self) is not Embedding:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def spec_values(self) -> dict:
        if self.quantization_mode is not None:
            raise ValueError(f"{self.name}: cannot read back a float table from quantization mode "
                             f"{self.quantization_mode!r}; save it with model.save('model.keras') instead")
        return {"embeddings": ops.convert_to_numpy(self.embeddings)}

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        return {**config, "num_embeddings": self.input_dim, "dim": self.output_dim}


def spec_attribute(layer, leaf: str) -> str:
    """The attribute of ``layer`` that holds the variable of spec leaf ``leaf``."""
    return getattr(layer, "SPEC_ATTRIBUTES", {}).get(leaf, leaf)


class LayerNorm(Layer):
    """LayerNorm over the last axis, computed in float32 (stable under mixed precision)."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        # read in float32 even under mixed precision (the norm is computed in float32)
        weight = lambda n, init: self.add_weight(shape=(dim,), initializer=init, name=n, autocast=False)  # noqa: E731
        self.gamma = weight("gamma", "ones") if affine else None
        self.beta = weight("beta", "zeros") if affine else None

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * ops.rsqrt(var + self.eps)
        if self.gamma is not None:
            y = y * self.gamma + self.beta
        return ops.cast(y, dtype)


class BatchNorm(Layer):
    """BatchNorm over the last (channel) axis with PyTorch's semantics: batch statistics in
    training (biased variance to normalise, unbiased to update the running variance),
    running statistics in inference, momentum 0.1, and a batch counter."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.momentum = eps, momentum
        # float32 even under mixed precision: statistics and the norm are computed in float32
        weight = lambda n, init, trainable=True: self.add_weight(  # noqa: E731
            shape=(dim,), initializer=init, name=n, trainable=trainable, autocast=False
        )
        self.gamma = weight("gamma", "ones")
        self.beta = weight("beta", "zeros")
        self.moving_mean = weight("moving_mean", "zeros", trainable=False)
        self.moving_variance = weight("moving_variance", "ones", trainable=False)
        self.num_batches_tracked = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", name="num_batches_tracked", trainable=False
        )

    def call(self, x, training=False):
        dtype = x.dtype
        x = ops.cast(x, "float32")
        if training:
            axes = list(range(len(x.shape) - 1))
            mean = ops.mean(x, axis=axes)
            var = ops.mean(ops.square(x - mean), axis=axes)
            n = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
            unbiased = var * n / ops.maximum(n - 1.0, 1.0)
            m = self.momentum
            self.moving_mean.assign((1 - m) * self.moving_mean + m * mean)
            self.moving_variance.assign((1 - m) * self.moving_variance + m * unbiased)
            self.num_batches_tracked.assign_add(ops.cast(1, "int64"))
        else:
            mean, var = self.moving_mean, self.moving_variance
        y = (x - mean) * ops.rsqrt(var + self.eps) * self.gamma + self.beta
        return ops.cast(y, dtype)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv1d(Layer):
    """1-D convolution on (B, T, C) with PyTorch's zero padding and groups."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True, **kwargs):
        super().__init__(**kwargs)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel = self.add_weight(shape=(kernel_size, in_ch // groups, out_ch), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(out_ch,), initializer="zeros", name="bias") if bias else None

    def call(self, x):
        if self.padding:
            x = ops.pad(x, [[0, 0], [self.padding, self.padding], [0, 0]])
        y = backend.conv1d(x, ops.cast(self.kernel, x.dtype), self.stride, self.dilation, self.groups)
        return y + self.bias if self.bias is not None else y


class Conv2d(Layer):
    """2-D convolution on NHWC with PyTorch's symmetric zero padding."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, bias=True, **kwargs):
        super().__init__(**kwargs)
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.kernel = self.add_weight(shape=(kh, kw, in_ch, out_ch), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(out_ch,), initializer="zeros", name="bias") if bias else None

    def call(self, x):
        ph, pw = self.padding
        if ph or pw:
            x = ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        y = backend.conv2d(x, ops.cast(self.kernel, x.dtype), self.stride, self.dilation)
        return y + self.bias if self.bias is not None else y


class ConvTranspose2d(Layer):
    """Transposed convolution with kernel == stride (non-overlapping), on NHWC."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, **kwargs):
        super().__init__(**kwargs)
        kh, kw = _pair(kernel_size)
        if _pair(stride) != (kh, kw):
            raise ValueError("ConvTranspose2d here supports stride == kernel_size only")
        self.kernel = self.add_weight(shape=(kh, kw, out_ch, in_ch), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(out_ch,), initializer="zeros", name="bias")

    def call(self, x):
        b, h, w, _ = ops.shape(x)
        kh, kw, out_ch, _ = self.kernel.shape
        # Each input pixel writes its own kh x kw block: a matmul then a depth-to-space.
        y = ops.einsum("bhwi,pqoi->bhpwqo", x, ops.cast(self.kernel, x.dtype))
        y = ops.reshape(y, (b, h * kh, w * kw, out_ch))
        return y + self.bias


class _TrainingOnlyRandomLayer(Layer):
    """The identity outside training or at rate 0; in training, ``_draw(x)`` draws from the
    layer's own seed generator (made only for a rate above 0)."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator() if rate > 0 else None

    def call(self, x, training=False):
        if not training or self.rate == 0.0:
            return x
        return self._draw(x)

    def _draw(self, x):
        raise NotImplementedError

    def _uniform(self, shape):
        """float32 uniforms in [0, 1): inside an encoder layer from the layer call's seed (so
        gradient checkpointing's recomputation draws the same masks; d2v_tf.checkpointing),
        elsewhere from the layer's seed generator."""
        if in_seeded_block():
            return block_uniform(shape)
        return keras.random.uniform(shape, dtype="float32", seed=self.seed_generator)


class Dropout(_TrainingOnlyRandomLayer):
    """Dropout drawn from the layer's own seed generator (inside an encoder layer, from the
    layer call's seed), active only with ``training=True``.

    Args:
        rate: the fraction of inputs zeroed in training.
    """

    def _draw(self, x):
        if not in_seeded_block():
            return keras.random.dropout(x, self.rate, seed=self.seed_generator)
        keep = 1.0 - self.rate
        kept = self._uniform(ops.shape(x)) < keep
        return ops.where(kept, x / ops.cast(keep, x.dtype), ops.zeros_like(x))


class DropPath(_TrainingOnlyRandomLayer):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``p``."""

    def __init__(self, p: float, **kwargs):
        super().__init__(p, **kwargs)

    @property
    def p(self) -> float:
        return self.rate

    def _draw(self, x):
        keep = 1.0 - self.p
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + ops.cast(self._uniform(shape), x.dtype))
        return x / keep * mask


# --------------------------------------------------------------------------- activations


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * ops.power(x, 3.0))))


def _gelu_erf(x):
    return x * 0.5 * (1.0 + ops.erf(x / math.sqrt(2.0)))


_ACTIVATION_FNS = {
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_10": lambda x: ops.clip(_gelu_erf(x), -10.0, 10.0),
    "gelu_new": _gelu_tanh,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + ops.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "quick_gelu": lambda x: x * ops.sigmoid(1.702 * x),
    "laplace": lambda x: 0.5 * (1.0 + ops.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "leaky_relu": lambda x: ops.leaky_relu(x, 0.01),
    "linear": lambda x: x,
    "mish": lambda x: x * ops.tanh(ops.softplus(x)),
    "relu": ops.relu,
    "relu2": lambda x: ops.square(ops.relu(x)),
    "relu6": ops.relu6,
    "sigmoid": ops.sigmoid,
    "silu": ops.silu,
    "swish": ops.silu,
    "tanh": ops.tanh,
}
assert set(_ACTIVATION_FNS) == set(ACTIVATIONS)


class Activation(Layer):
    """An activation chosen by its HF name (the config validates the name)."""

    def __init__(self, function: str, **kwargs):
        super().__init__(**kwargs)
        self.function = function
        self.fn = _ACTIVATION_FNS[function]

    def call(self, x):
        return self.fn(x)


# ------------------------------------------------------------------- transformer sub-blocks
# The feed-forward and projection pieces every family's encoder layer is made of; the family
# classes (``TFData2VecTextIntermediate`` ...) keep HF's names and only pick the sizes.


class DenseActivation(Layer):
    """Linear -> activation (a feed-forward block's first half)."""

    def __init__(self, in_features: int, out_features: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(in_features, out_features)
        self.act = Activation(activation)

    def call(self, x):
        return self.act(self.dense(x))


class DenseDropout(Layer):
    """Linear -> dropout (a projection back to the hidden size, residual added by the caller)."""

    def __init__(self, in_features: int, out_features: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(in_features, out_features)
        self.dropout = Dropout(dropout)

    def call(self, x, training=False):
        return self.dropout(self.dense(x), training=training)


# ----------------------------------------------------------------------------- attention


def split_heads(x, num_heads: int):
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t = ops.shape(x)[0], ops.shape(x)[1]
    # explicit head size: with an unknown batch size a -1 here would lose the static shape
    return ops.transpose(ops.reshape(x, (b, t, num_heads, x.shape[-1] // num_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H*D)."""
    b, h, t, d = ops.shape(x)
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (b, t, h * d))


def attention(query, key, value, bias=None, head_mask=None, dropout=None, training=False, need_weights=False,
              scale=None):
    """Scaled dot-product attention on (B, H, T, D); softmax in float32.

    ``dropout`` is a ``Dropout`` layer (or None) applied to the weights in training.
    Returns (context (B, T, H*D), weights or None).
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = backend.matmul_transposed(query, key) * ops.cast(scale, query.dtype)
    scores = ops.cast(scores, "float32")
    if bias is not None:
        scores = scores + ops.cast(bias, "float32")
    weights = ops.cast(ops.softmax(scores, axis=-1), query.dtype)
    probs = dropout(weights, training=training) if dropout is not None else weights
    if head_mask is not None:
        probs = probs * ops.cast(head_mask, probs.dtype)
    context = merge_heads(ops.matmul(probs, value))
    if not need_weights:
        return context, None
    return context, weights if head_mask is None else probs


def padding_bias(mask, dtype="float32"):
    """(B, S) keep-mask -> additive (B, 1, 1, S) bias: 0 or float32's minimum."""
    mask = ops.expand_dims(ops.expand_dims(ops.cast(mask, "float32"), 1), 1)  # LiteRT lacks x[:, None, None, :]
    return (1.0 - mask) * np.finfo(np.float32).min


def is_eager(tensor) -> bool:
    """Whether ``tensor`` holds values now, not a symbol in a traced graph (any Keras backend)."""
    return backend.is_concrete(tensor)


def tensor_info(tensor) -> TensorInfo:
    """Static shape, dtype name and (when eager) values, for the checks in ``d2v_common``."""
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    values = ops.convert_to_numpy(tensor) if is_eager(tensor) else None
    return TensorInfo(shape, dtype_name(keras.backend.standardize_dtype(tensor.dtype)), values)


def expand_head_mask(head_mask, num_layers: int):
    """(heads,) or (layers, heads) keep-mask -> one (1, H, 1, 1) mask per layer."""
    if head_mask is None:
        return [None] * num_layers
    head_mask = ops.convert_to_tensor(head_mask, "float32")
    check_head_mask(tuple(head_mask.shape), num_layers)
    if len(head_mask.shape) == 1:
        return [head_mask[None, :, None, None]] * num_layers
    return [head_mask[i][None, :, None, None] for i in range(num_layers)]


# ------------------------------------------------------------------------------ resizing


def resize2d(x, size: tuple[int, int], mode: str = "bilinear"):
    """Resize NHWC maps like ``torch.nn.functional.interpolate`` (align_corners=False) or
    ``adaptive_avg_pool2d`` (mode "adaptive_avg"), via ``d2v_common.models.interpolation``."""
    in_hw = (int(x.shape[1]), int(x.shape[2]))
    size = (int(size[0]), int(size[1]))
    if in_hw == size and mode != "bicubic":
        return x
    mh, mw = resize_matrices(in_hw, size, mode)
    # in float32 whatever the compute dtype: bf16 interpolation weights lose too much
    dtype = x.dtype
    y = ops.einsum("oh,bhwc,pw->bopc", mh, ops.cast(x, "float32"), mw)
    return ops.cast(y, dtype)


# -------------------------------------------------------------------------------- losses


def check_labels_in_range(labels, num_classes: int, ignore_index: int | None = IGNORE_INDEX, name: str = "labels"):
    """Class-id labels in [0, num_classes) or ``ignore_index``, else ``d2v_common``'s ValueError,
    the same in every mode: eager values are checked in numpy; traced ones (a graph, XLA,
    ``jax.jit``) by ``backend.value_check``, which raises it after the compiled step (a
    gather past the classes would clamp on TF/XLA and give NaN on JAX: a silently wrong loss)."""
    labels = ops.convert_to_tensor(labels)
    if is_eager(labels):
        check_label_range(name, ops.convert_to_numpy(labels), num_classes, ignore_index)
        return
    bad = ops.logical_or(ops.less(labels, 0), ops.greater_equal(labels, num_classes))
    if ignore_index is not None:
        bad = ops.logical_and(bad, ops.not_equal(labels, ignore_index))
    backend.value_check(
        bad, labels, functools.partial(label_range_message, name, num_classes, ignore_index),
        label_range_summary(name, num_classes, ignore_index),
    )


def cross_entropy(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean cross-entropy (classes on the last axis) over labels != ignore_index, in float32;
    labels outside the classes are refused (``check_labels_in_range``).

    Ignored positions are replaced by class 0 before the lookup, then masked out, so an ignore
    index such as 255 never indexes past the classes.
    """
    num_classes = logits.shape[-1]
    if isinstance(num_classes, int) and isinstance(ignore_index, int):  # else unknown until run
        check_labels_in_range(labels, num_classes, ignore_index)
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, ignore_index)
    safe = ops.where(valid, labels, ops.zeros_like(labels))
    if isinstance(num_classes, int):  # never gather past the classes (the check above reports those)
        safe = ops.clip(safe, 0, num_classes - 1)
    log_probs = ops.log_softmax(logits, axis=-1)
    picked = ops.take_along_axis(log_probs, ops.expand_dims(safe, -1), axis=-1)[..., 0]
    validf = ops.cast(valid, "float32")
    # Like torch: an all-ignored batch gives NaN (0 / 0).
    return -ops.sum(picked * validf) / ops.sum(validf)


def classification_loss(logits, labels, config):
    """HF's sequence / image classification loss (regression, single- or multi-label).

    A config without ``problem_type`` gets one on first use, as in HF.
    """
    if config.problem_type is None:
        config.problem_type = infer_problem_type(config.num_labels, keras.backend.standardize_dtype(labels.dtype))
    logits = ops.cast(logits, "float32")
    if config.problem_type == "regression":
        labels = ops.cast(labels, "float32")
        if config.num_labels == 1:
            return ops.mean(ops.square(ops.squeeze(logits) - ops.squeeze(labels)))
        return ops.mean(ops.square(logits - labels))
    if config.problem_type == "single_label_classification":
        return cross_entropy(ops.reshape(logits, (-1, config.num_labels)), ops.reshape(labels, (-1,)))
    labels = ops.cast(labels, "float32")
    return ops.mean(ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits))))
