"""Data2Vec audio (wav2vec2-shaped) in Keras 3: small blocks first, the five models last.

Twin of ``d2v_torch/audio.py``, section for section. Frames are channels-last (B, T, C)
throughout. Everything works inside ``model.fit`` (graph mode, unknown batch and time sizes);
checks that need the data's values run eagerly, and as graph assertions in ``fit``.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import ops

from d2v_common.models import audio as A
from d2v_common.configs import Data2VecAudioConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.outputs import (
    EncoderRecord,
    CausalLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    Wav2Vec2BaseModelOutput,
    XVectorOutput,
    finish,
)
from d2v_common.loader.pretrained import build_nested
from d2v_tf import backend
from d2v_tf.base import TFData2VecPreTrainedModel, unpack_inputs, weighted_layer_sum
from d2v_tf.checkpointing import Checkpointing, CheckpointingEncoder
from d2v_tf.layers import (
    is_eager, tensor_info, Activation, Conv1d, Dropout, Layer, LayerNorm, Linear, attention, check_labels_in_range,
    cross_entropy, padding_bias, split_heads,
)



def _draw(seed_generator):
    """One uniform draw in [0, 1) (a scalar tensor)."""
    return keras.random.uniform((), seed=seed_generator)


# ------------------------------------------------------------------------- feature encoder


class TFData2VecAudioConvLayer(Layer):
    """Strided conv -> LayerNorm over channels (torch's default eps) -> activation."""

    def __init__(self, config: Data2VecAudioConfig, layer_id: int, **kwargs):
        super().__init__(**kwargs)
        in_ch = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_ch = config.conv_dim[layer_id]
        self.conv = Conv1d(
            in_ch, out_ch, config.conv_kernel[layer_id], stride=config.conv_stride[layer_id], bias=config.conv_bias
        )
        self.layer_norm = LayerNorm(out_ch)
        self.activation = Activation(config.feat_extract_activation)

    def call(self, x):  # (B, T, C)
        return self.activation(self.layer_norm(self.conv(x)))


class TFData2VecAudioFeatureEncoder(Checkpointing, Layer):
    """Raw waveform (B, samples) -> frames (B, frames, channels).

    Under ``gradient_checkpointing_enable()`` training recomputes each conv layer in the backward
    pass while the encoder is trainable (as torch's twin).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.conv_layers = [self.conv_layer(config, i) for i in range(len(config.conv_dim))]

    @staticmethod
    def conv_layer(config: Data2VecAudioConfig, layer_id: int) -> Layer:
        return TFData2VecAudioConvLayer(config, layer_id)

    def _freeze_parameters(self) -> None:
        self.trainable = False

    def call(self, input_values, training=False):
        x = ops.expand_dims(input_values, -1)  # not x[..., None]: LiteRT lacks that strided slice
        for layer in self.conv_layers:
            x = self.remat_call(layer, x, training)
        return x


class TFData2VecAudioFeatureProjection(Layer):
    """LayerNorm over the conv channels -> Linear to hidden_size -> dropout: (B, T, conv_dim[-1]) -> (B, T, D).

    Returns the projected frames and the normalised features (``extract_features``).

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.layer_norm = LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = Dropout(config.feat_proj_dropout)

    def call(self, x, training=False):
        """Returns (projected frames, normalised features); the latter is ``extract_features``."""
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed), training=training), normed


# ----------------------------------------------------------------------- positional convs


class TFData2VecAudioPositionalConvLayer(Layer):
    """Grouped "same" conv (one frame trimmed for even kernels) -> LayerNorm without affine -> activation."""

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        k = config.conv_pos_kernel_size
        self.conv = Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.trim = 1 if k % 2 == 0 else 0
        self.layer_norm = LayerNorm(config.hidden_size, affine=False)
        self.activation = Activation(config.feat_extract_activation)

    def call(self, x):  # (B, T, C)
        x = self.conv(x)
        if self.trim:
            x = x[:, : -self.trim]
        return self.activation(self.layer_norm(x))


class TFData2VecAudioPositionalConvEmbedding(Layer):
    """Relative positions from ``num_conv_pos_embeddings`` grouped conv layers: (B, T, D) -> (B, T, D).

    The encoder adds the result to its input.

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.layers = [TFData2VecAudioPositionalConvLayer(config) for _ in range(config.num_conv_pos_embeddings)]

    def call(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# ------------------------------------------------------------------------------- encoder


class TFData2VecAudioAttention(Layer):
    """Multi-head self-attention (q, k, v and out projections, scores scaled by head_dim ** -0.5):
    (B, T, D) -> (B, T, D), plus the attention weights when asked. ``bias`` is an additive key mask.

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        # Passed explicitly: inside fit the batch size is unknown, so the head size is too.
        self.scale = (hidden // config.num_attention_heads) ** -0.5
        self.dropout = Dropout(config.attention_dropout)
        self.k_proj = Linear(hidden, hidden)
        self.v_proj = Linear(hidden, hidden)
        self.q_proj = Linear(hidden, hidden)
        self.out_proj = Linear(hidden, hidden)

    def call(self, x, bias=None, output_attentions=False, training=False):
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        context, weights = attention(q, k, v, bias, None, self.dropout, training, output_attentions, self.scale)
        return self.out_proj(context), weights


class TFData2VecAudioFeedForward(Layer):
    """Dense to intermediate_size -> activation -> dropout (``activation_dropout``) -> dense back ->
    dropout (``hidden_dropout``): (B, T, D) -> (B, T, D).

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dropout = Dropout(config.activation_dropout)
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = Activation(config.hidden_act)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = Dropout(config.hidden_dropout)

    def call(self, x, training=False):
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)), training=training)
        return self.output_dropout(self.output_dense(x), training=training)


class TFData2VecAudioEncoderLayer(Layer):
    """Post-norm block: attention -> dropout -> residual -> LayerNorm -> feed-forward residual -> LayerNorm."""

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        eps = config.layer_norm_eps
        self.attention = TFData2VecAudioAttention(config)
        self.dropout = Dropout(config.hidden_dropout)
        self.layer_norm = LayerNorm(config.hidden_size, eps=eps)
        self.feed_forward = TFData2VecAudioFeedForward(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=eps)

    def call(self, x, bias=None, output_attentions=False, training=False):
        """(output, attention weights, feed-forward output before the residual)."""
        attn, weights = self.attention(x, bias=bias, output_attentions=output_attentions, training=training)
        x = self.layer_norm(x + self.dropout(attn, training=training))
        ffn = self.feed_forward(x, training=training)
        return self.final_layer_norm(x + ffn), weights, ffn


class TFData2VecAudioEncoder(CheckpointingEncoder, Layer):
    """Positional convs (added) -> LayerNorm -> dropout -> post-norm encoder layers: (B, T, D) -> (B, T, D).

    ``frame_mask`` (B, T) zeroes padded frames and masks them as attention keys; in training,
    ``layerdrop`` skips whole layers. Returns the last state and the recorded hidden states,
    attentions and feed-forward outputs (None unless asked).

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = TFData2VecAudioPositionalConvEmbedding(config)
        self.layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)
        self.layers = [TFData2VecAudioEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        self.seed_generator = keras.random.SeedGenerator() if config.layerdrop > 0 else None
        self.init_checkpointing()

    def call(self, x, frame_mask=None, output_attentions=False, output_hidden_states=False, output_ffn_states=False,
             training=False):
        bias = None
        if frame_mask is not None:
            # Padded frames are zeroed, but the positional convs below still see them (as in HF).
            x = ops.where(ops.expand_dims(frame_mask, -1), x, ops.zeros_like(x))
            bias = padding_bias(frame_mask)
        x = x + self.pos_conv_embed(x)
        x = self.dropout(self.layer_norm(x), training=training)
        record = EncoderRecord(output_hidden_states, output_attentions, output_ffn_states)
        for layer in self.layers:
            record.layer_input(x)
            drop = None
            if training and self.layerdrop > 0:
                drop = _draw(self.seed_generator) < self.layerdrop
            if drop is not None and is_eager(drop) and bool(drop):
                weights = ffn = None  # skipped by layerdrop, as in HF
            else:
                new_x, weights, ffn = self.call_layer(layer, x, dict(bias=bias), training,
                                                      output_attentions=output_attentions)
                # In a traced graph the draw is symbolic: run the layer and select.
                x = new_x if drop is None or is_eager(drop) else ops.where(drop, x, new_x)
            record.layer_output(weights, ffn=ffn)
        record.finish(x)
        return x, record.hidden_states, record.attentions, record.ffn_states


# ------------------------------------------------------------------------------- adapter


class TFData2VecAudioAdapterLayer(Layer):
    """Strided conv to twice the width, then a GLU back to the width."""

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        width = config.output_hidden_size
        self.conv = Conv1d(width, 2 * width, config.adapter_kernel_size, stride=config.adapter_stride, padding=1)

    def call(self, x):  # (B, T, C)
        a, b = ops.split(self.conv(x), 2, axis=-1)
        return a * ops.sigmoid(b)


class TFData2VecAudioAdapter(Layer):
    """Optional Linear + LayerNorm to output_hidden_size, then ``num_adapter_layers`` strided conv + GLU
    layers that shorten the sequence: (B, T, D) -> (B, T', output_hidden_size). In training each conv
    layer is skipped with probability ``layerdrop``.

    Args:
        config: the model's ``Data2VecAudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(**kwargs)
        if config.output_hidden_size != config.hidden_size:
            self.proj = Linear(config.hidden_size, config.output_hidden_size)
            self.proj_layer_norm = LayerNorm(config.output_hidden_size)
        else:
            self.proj = self.proj_layer_norm = None
        self.layers = [TFData2VecAudioAdapterLayer(config) for _ in range(config.num_adapter_layers)]
        self.layerdrop = config.layerdrop
        self.seed_generator = keras.random.SeedGenerator() if config.layerdrop > 0 else None

    def call(self, x, training=False):
        if self.proj is not None:
            x = self.proj_layer_norm(self.proj(x))
        for layer in self.layers:
            if not training or self.layerdrop == 0:
                x = layer(x)
                continue
            keep = _draw(self.seed_generator) > self.layerdrop
            if is_eager(keep):
                x = layer(x) if bool(keep) else x
            else:  # the two branches differ in length: a graph conditional
                x = backend.shape_changing_cond(keep, lambda layer=layer, x=x: layer(x), lambda x=x: x)
        return x


# ---------------------------------------------------------------------------- head blocks


class TFTDNNLayer(Layer):
    """Dilated conv kept as a Linear (HF's checkpoint layout): the Linear applied to each
    frame's ``kernel_size`` taps, ``dilation`` frames apart, laid side by side (tap-major)."""

    def __init__(self, config: Data2VecAudioConfig, layer_id: int, **kwargs):
        super().__init__(**kwargs)
        dims = config.tdnn_dim
        self.in_dim = dims[layer_id - 1] if layer_id > 0 else dims[0]
        self.out_dim = dims[layer_id]
        self.kernel_size = config.tdnn_kernel[layer_id]
        self.dilation = config.tdnn_dilation[layer_id]
        self.kernel = Linear(self.in_dim * self.kernel_size, self.out_dim)

    def call(self, x):
        # Built from slices rather than a dilated conv: TF's CPU conv has no dilated gradient
        # outside float32.
        span = (self.kernel_size - 1) * self.dilation
        frames = ops.shape(x)[1] - span
        taps = [x[:, j * self.dilation : j * self.dilation + frames] for j in range(self.kernel_size)]
        return ops.relu(self.kernel(ops.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]))


def _normalize(x, axis: int):
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, 1e-12)


class TFAMSoftmaxLoss(Layer):
    """Additive-margin softmax: cosine logits, margin on the target class, scaled."""

    def __init__(self, input_dim: int, num_labels: int, scale: float = 30.0, margin: float = 0.4, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.margin, self.num_labels = scale, margin, num_labels
        self.weight = self.add_weight(shape=(input_dim, num_labels), initializer="zeros", name="weight")

    def call(self, x, labels):
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        check_labels_in_range(labels, self.num_labels, ignore_index=None)  # one_hot has no ignore index
        x = ops.cast(x, "float32")
        cos = ops.matmul(_normalize(x, 1), _normalize(ops.cast(self.weight, "float32"), 0))
        target = ops.one_hot(labels, self.num_labels) > 0.5
        logits = self.scale * ops.where(target, cos - self.margin, cos)
        return cross_entropy(logits, labels)


def statistics_pooling(x, lengths):
    """[mean, unbiased std] over the first ``lengths`` frames of each row -> (B, 2C)."""
    keep = ops.expand_dims(ops.cast(ops.arange(ops.shape(x)[1])[None, :] < lengths[:, None], x.dtype), -1)
    n = ops.cast(lengths, x.dtype)[:, None]
    # An all-padding row (no frames) pools to zeros instead of 0 / 0.
    mean = ops.sum(x * keep, axis=1) / ops.maximum(n, 1.0)
    var = ops.sum(ops.square((x - mean[:, None]) * keep), axis=1) / ops.maximum(n - 1.0, 1.0)
    # A constant channel (a dead ReLU) has std 0 and, as with torch.std, gets no gradient
    # instead of sqrt's infinite one.
    positive = var > 0
    std = ops.where(positive, ops.sqrt(ops.where(positive, var, ops.ones_like(var))), ops.zeros_like(var))
    return ops.concatenate([mean, std], axis=-1)


def first_argmax(labels):
    """Index of the first maximum along the last axis (torch's tie rule; tf.argmax does not promise one)."""
    labels = ops.convert_to_tensor(labels)
    n = labels.shape[-1]
    top = ops.max(labels, axis=-1, keepdims=True)
    idx = ops.arange(n, dtype="int32")
    return ops.min(ops.where(labels == top, idx, n), axis=-1)


def ctc_loss(logits, labels, input_lengths, blank: int, reduction: str, zero_infinity: bool):
    """``torch.nn.functional.ctc_loss`` over (B, T, V) logits and (B, L) labels padded with -100.

    Negative labels anywhere in a row are dropped (the row is compacted), as HF does. TF's CTC
    returns a finite number where no alignment exists; such rows (target plus one blank between
    repeats longer than the frames) get torch's inf, or 0 with ``zero_infinity``, and run with an
    empty target so no gradient flows through them. "mean" divides each row by its target
    length, then averages; "sum" sums.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "int32")
    input_lengths = ops.cast(input_lengths, "int32")
    keep = labels >= 0
    target_lengths = ops.sum(ops.cast(keep, "int32"), axis=-1)
    width = ops.shape(labels)[1]
    position = ops.arange(width, dtype="int32")[None, :]
    # kept labels first, in order: sort by (dropped, position), keys unique so any sort is stable
    order = ops.argsort(ops.cast(ops.logical_not(keep), "int32") * width + position, axis=-1)
    targets = ops.take_along_axis(labels, order, axis=1)
    valid = position < target_lengths[:, None]
    targets = ops.where(valid, targets, ops.zeros_like(targets))
    repeats = ops.sum(ops.cast(valid[:, 1:] & (targets[:, 1:] == targets[:, :-1]), "int32"), axis=-1)
    infeasible = target_lengths + repeats > input_lengths
    losses = ops.ctc_loss(targets, logits, ops.where(infeasible, 0, target_lengths), input_lengths, mask_index=blank)
    losses = ops.where(infeasible, 0.0 if zero_infinity else float("inf"), losses)
    if reduction == "mean":
        return ops.mean(losses / ops.cast(ops.maximum(target_lengths, 1), "float32"))
    return ops.sum(losses)


# --------------------------------------------------------------------------------- models


class TFData2VecAudioPreTrainedModel(TFData2VecPreTrainedModel):
    """Base of the Keras audio classes: config class, input name and audio helpers (not built directly).

    Args:
        config: a ``Data2VecAudioConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2VecAudioConfig
    base_model_prefix = "data2vec_audio"
    main_input_name = "input_values"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        # Random SpecAugment masks come from numpy (shared with PyTorch), which XLA cannot compile
        # on TensorFlow (JAX compiles the numpy callback).
        self.supports_jit = backend.NUMPY_CALLBACKS_COMPILE or not (config.mask_time_prob > 0 or config.mask_feature_prob > 0)

    def _frame_mask(self, attention_mask, frames, add_adapter: bool = False):
        """Sample-level mask -> (B, frames) bool keep-mask from the length formula."""
        samples = ops.sum(ops.cast(attention_mask, "int32"), axis=-1)
        lengths = A.feature_lengths(self.config, samples, add_adapter=add_adapter)
        return ops.arange(frames)[None, :] < lengths[:, None]


def _check_inputs(config, input_values, attention_mask):
    input_values = ops.convert_to_tensor(input_values)
    frames = A.check_input_values(config, tuple(input_values.shape), str(input_values.dtype))
    if attention_mask is not None:
        attention_mask = ops.convert_to_tensor(attention_mask)
        A.check_attention_mask_shape(tuple(attention_mask.shape), tuple(input_values.shape))
        if is_eager(attention_mask):
            A.check_attention_mask(config, np.asarray(attention_mask), tuple(input_values.shape))
    return input_values, attention_mask, frames


class TFData2VecAudioModel(TFData2VecAudioPreTrainedModel):
    """The bare audio encoder: conv feature encoder, transformer, optional adapter.

    Args:
        config: a ``Data2VecAudioConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``Data2VecBaseModelOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecAudioModel"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.feature_extractor = TFData2VecAudioFeatureEncoder(config)
        self.feature_projection = TFData2VecAudioFeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = self.add_weight(
                shape=(config.hidden_size,), initializer="zeros", name="masked_spec_embed"
            )
        else:
            self.masked_spec_embed = None
        self.encoder = TFData2VecAudioEncoder(config)
        self.adapter = TFData2VecAudioAdapter(config) if config.add_adapter else None
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Make the conv feature encoder non-trainable (compile again afterwards)."""
        self.feature_extractor._freeze_parameters()

    @staticmethod
    def _random_mask(make, inputs, dims):
        """A numpy-made mask (the code PyTorch uses too), also inside a traced graph."""

        def run(*arrays):
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            return make(*arrays, rng)

        return backend.numpy_call(run, inputs, ["bool"], [dims])[0]

    def _mask_hidden_states(self, x, mask_time_indices=None, frame_mask=None, training=False):
        """SpecAugment: a given ``mask_time_indices`` always applies (as in HF); random time and
        feature masks only in training."""
        config = self.config
        if not A.spec_augment_enabled(config):
            return x
        batch, frames = ops.shape(x)[0], ops.shape(x)[1]
        if mask_time_indices is not None:
            mask_time_indices = ops.convert_to_tensor(mask_time_indices)
            static = tuple(x.shape[:2])
            if None not in static or self.masked_spec_embed is None:
                A.check_mask_time_indices(tuple(mask_time_indices.shape), static, self.masked_spec_embed is not None)
            embed = ops.cast(self.masked_spec_embed, x.dtype)
            x = ops.where(ops.cast(mask_time_indices, "bool")[..., None], embed, x)
        elif config.mask_time_prob > 0 and training:
            lengths = (
                ops.sum(ops.cast(frame_mask, "int32"), axis=-1)
                if frame_mask is not None
                else ops.full((batch,), frames, dtype="int32")
            )
            mask = self._random_mask(
                lambda b, t, lens, rng: A.random_time_mask(config, int(b), int(t), lens, rng),
                [batch, frames, lengths], x.shape[:2],
            )
            x = ops.where(mask[..., None], ops.cast(self.masked_spec_embed, x.dtype), x)
        if config.mask_feature_prob > 0 and training:
            mask = self._random_mask(
                lambda b, rng: A.random_feature_mask(config, int(b), rng), [batch], (x.shape[0], config.hidden_size)
            )
            x = ops.where(mask[:, None, :], ops.zeros_like(x), x)
        return x

    @unpack_inputs
    @document_inputs("Data2VecAudioModel")
    def call(self, input_values=None, attention_mask=None, mask_time_indices=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, output_ffn_states=False, training=False):
        """``output_ffn_states`` (d2v only, for data2vec pretraining): the returned object also
        carries ``ffn_states``, each layer's feed-forward output before its residual."""
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        input_values, attention_mask, _ = _check_inputs(self.config, input_values, attention_mask)
        features = self.feature_extractor(input_values, training=training)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self._frame_mask(attention_mask, ops.shape(features)[1])
        x, extract_features = self.feature_projection(features, training=training)
        x = self._mask_hidden_states(x, mask_time_indices, frame_mask, training)
        x, hidden_states, attentions, ffn_states = self.encoder(
            x, frame_mask=frame_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, output_ffn_states=output_ffn_states, training=training,
        )
        if self.adapter is not None:
            x = self.adapter(x, training=training)
        out = Wav2Vec2BaseModelOutput(x, extract_features, hidden_states, attentions)
        if output_ffn_states:
            out.ffn_states = ffn_states  # an attribute, not an HF output field
        return finish(out, return_dict)


def _graph_assert(condition, message: str):
    """A data-dependent check inside a traced graph (eager calls raise ValueError before this)."""
    backend.value_check(ops.logical_not(condition), ops.cast(condition, "int32"), lambda _: message, message)


def check_ctc_labels_in_graph(config, labels, lengths) -> None:
    """``A.check_ctc_labels`` for traced labels (a graph, XLA, ``jax.jit``): the ids and the row
    lengths are checked inside the step (``backend.value_check``), as in the 1.0 and 2.0 heads."""
    blank = A.ctc_blank(config)
    too_big = ops.greater_equal(labels, config.vocab_size)
    backend.value_check(too_big, labels, functools.partial(A.ctc_vocab_message, config),
                        f"CTC labels must be < vocab_size ({config.vocab_size})")
    _graph_assert(labels != blank, f"CTC labels contain the blank id {blank}; pad them with -100")
    if not config.ctc_zero_infinity:
        targets = ops.sum(ops.cast(labels >= 0, "int32"), axis=-1)
        _graph_assert(
            targets <= ops.cast(lengths, "int32"),
            "CTC labels are longer than the output frames; use longer audio or set ctc_zero_infinity=True",
        )


class TFData2VecAudioForCTC(TFData2VecAudioPreTrainedModel):
    """Audio encoder + dropout + linear LM head, trained with CTC on character labels.

    Args:
        config: a ``Data2VecAudioConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``CausalLMOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecAudioForCTC"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec_audio = build_nested(TFData2VecAudioModel, config)
        self.dropout = Dropout(config.final_dropout)
        width = config.output_hidden_size if config.add_adapter else config.hidden_size
        self.lm_head = Linear(width, config.vocab_size)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        self.data2vec_audio.freeze_feature_encoder()

    def freeze_feature_extractor(self) -> None:
        A.warn_freeze_feature_extractor()
        self.freeze_feature_encoder()

    def ctc_input_lengths(self, input_values, attention_mask=None):
        """Output frames per row (HF's formula, adapter included)."""
        if attention_mask is None:
            shape = ops.shape(input_values)
            samples = ops.full((shape[0],), shape[1], dtype="int32")
        else:
            samples = ops.sum(ops.cast(attention_mask, "int32"), axis=-1)
        # an all-padding row has no frames (the formula goes negative there)
        return ops.maximum(A.feature_lengths(self.config, samples), 0)

    def loss_from_outputs(self, outputs, labels):
        config = self.config
        blank = A.ctc_blank(config)
        labels = ops.convert_to_tensor(labels)
        if "int" not in str(labels.dtype):
            raise TypeError(f"CTC labels must be integer token ids, got {labels.dtype}")
        lengths = outputs._input_lengths
        frames = ops.shape(outputs.logits)[1]
        if is_eager(labels) and is_eager(lengths):
            lengths_np = np.asarray(lengths)
            A.check_ctc_frames(config, int(lengths_np.max()), int(frames))
            A.check_ctc_labels(config, np.asarray(labels), lengths_np)
        else:
            check_ctc_labels_in_graph(config, labels, lengths)
        return ctc_loss(
            outputs.logits, labels, lengths, blank, config.ctc_loss_reduction, config.ctc_zero_infinity
        )

    def loss_count(self, x, labels):
        # "sum" adds the examples' losses: the replicas' sums add up without rescaling
        return None if self.config.ctc_loss_reduction == "sum" else super().loss_count(x, labels)

    @unpack_inputs
    @document_inputs("Data2VecAudioForCTC")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        if labels is not None:
            labels = ops.convert_to_tensor(labels)
            A.check_ctc_label_range(self.config, np.asarray(labels) if is_eager(labels) else None)
        base = self.data2vec_audio(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            training=training,
        )
        logits = self.lm_head(self.dropout(base.last_hidden_state, training=training))
        out = CausalLMOutput(None, logits, base.hidden_states, base.attentions)
        # Kept for the loss when Keras passes the labels separately (fit with y).
        out._input_lengths = self.ctc_input_lengths(ops.convert_to_tensor(input_values), attention_mask)
        return self._finish_with_loss(out, labels, return_dict)


class _TFData2VecAudioClassifierBase(TFData2VecAudioPreTrainedModel):
    """Shared by the three heads that read the encoder states (no adapter allowed)."""

    def _init_base(self, config: Data2VecAudioConfig) -> None:
        self.data2vec_audio = build_nested(TFData2VecAudioModel, config)
        self._init_layer_weights()

    def freeze_feature_encoder(self) -> None:
        self.data2vec_audio.freeze_feature_encoder()

    def freeze_feature_extractor(self) -> None:
        A.warn_freeze_feature_extractor()
        self.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Train only the head (compile again afterwards)."""
        self.data2vec_audio.trainable = False

    def _encode(self, input_values, attention_mask, output_attentions, output_hidden_states, training):
        weighted = self.layer_weights is not None
        base = self.data2vec_audio(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=True if weighted else output_hidden_states,
            return_dict=True,
            training=training,
        )
        x = weighted_layer_sum(base.hidden_states, self.layer_weights) if weighted else base.last_hidden_state
        return x, base


class TFData2VecAudioForSequenceClassification(_TFData2VecAudioClassifierBase):
    """Audio encoder + projector + mean pooling over real frames + classifier.

    Args:
        config: a ``Data2VecAudioConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``SequenceClassifierOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecAudioForSequenceClassification"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self._init_base(config)
        self.projector = Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        n = self.config.num_labels
        if is_eager(labels):
            A.check_sequence_labels(np.asarray(labels), outputs.logits.shape[0], n)
        return cross_entropy(ops.reshape(outputs.logits, (-1, n)), ops.reshape(labels, (-1,)))

    @unpack_inputs
    @document_inputs("Data2VecAudioForSequenceClassification")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states, training)
        x = self.projector(x)
        if attention_mask is None:
            pooled = ops.mean(x, axis=1)
        else:
            keep = self._frame_mask(attention_mask, ops.shape(x)[1], add_adapter=self.config.add_adapter)
            total = ops.sum(ops.where(ops.expand_dims(keep, -1), x, ops.zeros_like(x)), axis=1)
            # an all-padding row pools to zeros (HF divides 0 by its frame count, or worse)
            count = ops.maximum(ops.sum(ops.cast(keep, "int32"), axis=1), 1)
            pooled = total / ops.cast(count, x.dtype)[:, None]
        logits = self.classifier(pooled)
        out = SequenceClassifierOutput(None, logits, base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecAudioForAudioFrameClassification(_TFData2VecAudioClassifierBase):
    """Per-frame classifier; labels are (batch, frames, num_labels) scores and the loss is the
    cross-entropy against each frame's first argmax. The loss is kept with return_dict=False."""

    architecture = "Data2VecAudioForAudioFrameClassification"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self._init_base(config)
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.num_labels = config.num_labels
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        logits = outputs.logits
        n = self.num_labels
        batch, frames = logits.shape[0], logits.shape[1]
        if None not in (batch, frames):
            A.check_frame_labels(tuple(labels.shape), batch, frames, n)
        return cross_entropy(ops.reshape(logits, (-1, n)), first_argmax(ops.reshape(labels, (-1, n))))

    @unpack_inputs
    @document_inputs("Data2VecAudioForAudioFrameClassification")
    def call(self, input_values=None, attention_mask=None, labels=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states, training)
        logits = self.classifier(x)
        out = TokenClassifierOutput(None, logits, base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecAudioForXVector(_TFData2VecAudioClassifierBase):
    """Audio encoder + TDNN layers + statistics pooling -> speaker embeddings (AM-softmax loss).

    Args:
        config: a ``Data2VecAudioConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``XVectorOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecAudioForXVector"

    def __init__(self, config: Data2VecAudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self._init_base(config)
        self.projector = Linear(config.hidden_size, config.tdnn_dim[0])
        self.tdnn = [TFTDNNLayer(config, i) for i in range(len(config.tdnn_dim))]
        self.feature_extractor = Linear(config.tdnn_dim[-1] * 2, config.xvector_output_dim)
        self.classifier = Linear(config.xvector_output_dim, config.xvector_output_dim)
        self.objective = TFAMSoftmaxLoss(config.xvector_output_dim, config.num_labels)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        if is_eager(labels):
            A.check_xvector_labels(np.asarray(labels), outputs.logits.shape[0], self.config.num_labels)
        return self.objective(outputs.logits, labels)

    @unpack_inputs
    @document_inputs("Data2VecAudioForXVector")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        config = self.config
        input_values, attention_mask, frames = _check_inputs(config, input_values, attention_mask)
        samples = None
        if attention_mask is not None:
            samples = ops.sum(ops.cast(attention_mask, "int32"), axis=-1)
        if frames is not None and (samples is None or is_eager(samples)):
            lengths_np = None if samples is None else A.feature_lengths(config, np.asarray(samples))
            A.check_xvector_frames(config, frames, lengths_np)
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states, training)
        x = self.projector(x)
        for layer in self.tdnn:
            x = layer(x)
        full = ops.full((ops.shape(x)[0],), ops.shape(x)[1], dtype="int32")
        if samples is None:
            lengths = full
        else:
            # HF's TDNN length formula ignores dilation; slicing past the end keeps every frame.
            lengths = ops.maximum(ops.minimum(A.tdnn_lengths(config, A.feature_lengths(config, samples)), full), 0)
        embeddings = self.feature_extractor(statistics_pooling(x, lengths))
        logits = self.classifier(embeddings)
        out = XVectorOutput(None, logits, embeddings, base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


__all__ = [
    "TFData2VecAudioForAudioFrameClassification", "TFData2VecAudioForCTC", "TFData2VecAudioForSequenceClassification",
    "TFData2VecAudioForXVector", "TFData2VecAudioModel", "TFData2VecAudioPreTrainedModel",
]
