"""data2vec 2.0 in Keras 3 (``TF`` prefix), twin of ``d2v_torch/data2vec2.py`` section for
section: the shared post-LN encoder, then vision, audio and text models.

Variables are named by attribute path, equal to the canonical names of
``d2v_common.spec.data2vec2``; shared formulas and checks come from ``d2v_common.data2vec2``.
Tensor math uses ``keras.ops``; convolutions run channels-last.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from d2v_common.models import audio as A
from d2v_common import data2vec2 as D
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.outputs import (
    BaseModelOutput,
    CausalLMOutput,
    ImageClassifierOutput,
    SequenceClassifierOutput,
    Wav2Vec2BaseModelOutput,
    finish,
)
from d2v_common.loader.pretrained import build_nested
from d2v_common.spec.data2vec2 import has_context_norm
from d2v_tf.audio import (
    TFData2VecAudioConvLayer, TFData2VecAudioFeatureEncoder, TFData2VecAudioPositionalConvEmbedding,
    check_ctc_labels_in_graph, ctc_loss,
)
from d2v_tf.base import TFData2VecPreTrainedModel, unpack_inputs
from d2v_tf.checkpointing import CheckpointingEncoder
from d2v_tf.layers import (
    Activation,
    Conv1d,
    Conv2d,
    Dropout,
    Embedding,
    Layer,
    LayerNorm,
    Linear,
    attention,
    classification_loss,
    is_eager,
    padding_bias,
)

# ------------------------------------------------------------------------------ encoder


def _layer_norm(config, dim: int | None = None) -> LayerNorm:
    return LayerNorm(dim or config.hidden_size, eps=config.layer_norm_eps, affine=config.layer_norm_affine)


class TFData2Vec2Attention(Layer):
    """Fused qkv projection -> softmax(q k^T / sqrt(d) + bias) v -> output projection."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv_proj = Linear(d, 3 * d)
        self.out_proj = Linear(d, d)
        self.attention_dropout = Dropout(config.attention_dropout)
        self.dropout = Dropout(config.hidden_dropout)

    def call(self, x, bias=None, output_attentions=False, training=False):
        """(output, attention weights or None)."""
        b, t, d = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        qkv = ops.reshape(self.qkv_proj(x), (b, t, 3, self.num_heads, d // self.num_heads))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        context, weights = attention(qkv[0], qkv[1], qkv[2], bias, dropout=self.attention_dropout, training=training,
                                     need_weights=output_attentions)
        return self.dropout(self.out_proj(context), training=training), weights


class TFData2Vec2FeedForward(Layer):
    """Dense to intermediate_size -> activation -> dropout -> dense back -> dropout (both dropouts
    ``activation_dropout``): (B, T, D) -> (B, T, D).

    Args:
        config: the model's data2vec 2.0 config (``Data2Vec2VisionConfig``,
            ``Data2Vec2AudioConfig`` or ``Data2Vec2TextConfig``).
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size)
        self.activation = Activation(config.hidden_act)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.activation_dropout)

    def call(self, x, training=False):
        x = self.dropout(self.activation(self.intermediate_dense(x)), training=training)
        return self.dropout(self.output_dense(x), training=training)


class TFData2Vec2Layer(Layer):
    """fairseq AltBlock (see the PyTorch twin for the ``layer_norm_first`` quirk)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.pre_norm = config.layer_norm_first
        self.attention = TFData2Vec2Attention(config)
        self.layer_norm = _layer_norm(config)
        self.feed_forward = TFData2Vec2FeedForward(config)
        self.final_layer_norm = _layer_norm(config)
        self.post_mlp_dropout = Dropout(config.post_mlp_dropout)

    def call(self, x, bias=None, output_attentions=False, training=False):
        """(output, attention weights or None)."""
        if self.pre_norm:
            attn, weights = self.attention(
                self.layer_norm(x), bias=bias, output_attentions=output_attentions, training=training
            )
            x = x + attn
            r = x = self.feed_forward(self.final_layer_norm(x), training=training)
            return r + self.post_mlp_dropout(x, training=training), weights
        attn, weights = self.attention(x, bias=bias, output_attentions=output_attentions, training=training)
        x = self.layer_norm(x + attn)
        mlp = self.post_mlp_dropout(self.feed_forward(x, training=training), training=training)
        return self.final_layer_norm(x + mlp), weights


class TFData2Vec2Encoder(CheckpointingEncoder, Layer):
    """Extra tokens -> context encoder (LayerNorm, prenet layers) -> main layers (-> final LN)."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        d = config.hidden_size
        self.config = config
        n = config.num_extra_tokens
        self.extra_tokens = self.add_weight(shape=(1, n, d), initializer="zeros", name="extra_tokens") if n else None
        if config.use_alibi:
            self.alibi_scale = self.add_weight(
                shape=config.alibi_scale_shape, initializer=keras.initializers.Constant(config.alibi_scale),
                name="alibi_scale", trainable=config.learned_alibi_scale,
            )
        else:
            self.alibi_scale = None
        self.layer_norm = _layer_norm(config) if has_context_norm(config) else None
        self.prenet_layers = [TFData2Vec2Layer(config) for _ in range(config.num_prenet_layers)]
        self.layers = [TFData2Vec2Layer(config) for _ in range(config.num_hidden_layers)]
        self.final_layer_norm = _layer_norm(config) if config.layer_norm_first else None
        self.init_checkpointing()

    def _alibi_per_layer(self, alibi):
        alibi = ops.cast(alibi, "float32")  # biases are added to float32 scores
        scales = ops.maximum(ops.cast(self.alibi_scale, "float32"), 0.0)
        pad_heads = self.config.num_attention_heads - alibi.shape[0]
        out = []
        for i in range(len(self.prenet_layers) + len(self.layers)):
            bias = alibi[None] * scales[i if scales.shape[0] > 1 else 0]
            out.append(ops.pad(bias, [[0, 0], [0, pad_heads], [0, 0], [0, 0]]) if pad_heads else bias)
        return out

    def call(self, x, keep=None, alibi=None, output_hidden_states=False, output_attentions=False, training=False):
        """(output, main-layer hidden states or None, main-layer attention weights or None)."""
        n = self.config.num_extra_tokens
        if n:
            tokens = ops.broadcast_to(ops.cast(self.extra_tokens, x.dtype), (ops.shape(x)[0], n, x.shape[-1]))
            x = ops.concatenate([tokens, x], axis=1)
            if keep is not None:
                keep = ops.pad(ops.cast(keep, "int32"), [[0, 0], [n, 0]], constant_values=1)
            if alibi is not None:
                alibi = ops.pad(alibi, [[0, 0], [n, 0], [n, 0]])
        pad = None if keep is None else padding_bias(keep)
        biases = self._alibi_per_layer(alibi) if alibi is not None else None
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        hidden_states, attentions = [], []
        layers = [*self.prenet_layers, *self.layers]
        for i, layer in enumerate(layers):
            if i == len(self.prenet_layers) and output_hidden_states:
                hidden_states.append(x)
            bias = pad
            if biases is not None:
                bias = biases[i] if pad is None else biases[i] + pad
            x, weights = self.call_layer(layer, x, dict(bias=bias), training, output_attentions=output_attentions)
            if i >= len(self.prenet_layers):
                if output_hidden_states:
                    hidden_states.append(x)
                if output_attentions:
                    attentions.append(weights)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if n and not self.config.keeps_extra_tokens:  # audio / text: as fairseq's extract_features
            x, hidden_states = x[:, n:], [h[:, n:] for h in hidden_states]
        return (
            x,
            tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
        )


class TFData2Vec2PreTrainedModel(TFData2VecPreTrainedModel):
    """Base of the data2vec 2.0 Keras classes."""

    def loss_from_outputs(self, outputs, labels):
        return classification_loss(outputs.logits, ops.convert_to_tensor(labels), self.config)


# ------------------------------------------------------------------------------- vision


class TFData2Vec2VisionPatchEmbeddings(Layer):
    """Stride-``patch_size`` convolution, row-major flatten, optional Linear to hidden_size:
    (B, H, W, C) NHWC -> (B, N, D).

    Args:
        config: the model's ``Data2Vec2VisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2Vec2VisionConfig, **kwargs):
        super().__init__(**kwargs)
        width = config.patch_embed_dim or config.hidden_size
        p = config.patch_size
        self.projection = Conv2d(config.num_channels, width, p, stride=p)
        self.dense = Linear(width, config.hidden_size) if width != config.hidden_size else None

    def call(self, pixel_values_nhwc):
        x = self.projection(pixel_values_nhwc)
        x = ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))  # row-major patches
        return self.dense(x) if self.dense is not None else x


class TFData2Vec2VisionEmbeddings(Layer):
    """Patch embeddings plus, with ``use_fixed_positions``, a fixed (not trained) position table:
    (B, H, W, C) NHWC -> (B, N, D).

    Args:
        config: the model's ``Data2Vec2VisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2Vec2VisionConfig, **kwargs):
        super().__init__(**kwargs)
        self.patch_embeddings = TFData2Vec2VisionPatchEmbeddings(config)
        if config.use_fixed_positions:
            self.position_embeddings = self.add_weight(
                shape=(1, config.num_patches, config.hidden_size), initializer="zeros", name="position_embeddings",
                trainable=False,
            )
        else:
            self.position_embeddings = None

    def call(self, pixel_values_nhwc):
        x = self.patch_embeddings(pixel_values_nhwc)
        return x + ops.cast(self.position_embeddings, x.dtype) if self.position_embeddings is not None else x


class TFData2Vec2VisionPreTrainedModel(TFData2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 Keras vision classes: config class, weight prefix, input name.

    Args:
        config: a ``Data2Vec2VisionConfig``; it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"


class TFData2Vec2VisionModel(TFData2Vec2VisionPreTrainedModel):
    """Image encoder: ``last_hidden_state`` (B, extra tokens + patches, D); NCHW input."""

    architecture = "Data2Vec2VisionModel"

    def __init__(self, config: Data2Vec2VisionConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.embeddings = TFData2Vec2VisionEmbeddings(config)
        self.encoder = TFData2Vec2Encoder(config)
        self._alibi = D.image_alibi_bias(config) if config.use_alibi else None
        self.post_init()

    @unpack_inputs
    @document_inputs("Data2Vec2VisionModel")
    def call(self, pixel_values=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             training=False):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        pixel_values = ops.convert_to_tensor(pixel_values)
        D.check_pixel_values(self.config, tuple(pixel_values.shape), pixel_values.dtype)
        x = self.embeddings(ops.transpose(pixel_values, (0, 2, 3, 1)))
        alibi = None if self._alibi is None else ops.convert_to_tensor(self._alibi)
        x, hidden, attentions = self.encoder(x, alibi=alibi, output_hidden_states=output_hidden_states,
                                             output_attentions=output_attentions, training=training)
        return finish(BaseModelOutput(x, hidden, attentions), return_dict)


def lin_softmax_pool(x):
    """fairseq's LIN_SOFTMAX pooling over tokens (axis 1), in float32."""
    dtype = x.dtype
    x = ops.log_sigmoid(ops.cast(x, "float32"))
    x = ops.logsumexp(x + x, axis=1) - ops.logsumexp(x + 1e-6, axis=1)
    x = ops.minimum(x, 0.0)
    x = x - ops.log(-ops.expm1(x))
    x = ops.where(ops.isfinite(x), x, ops.zeros_like(x))  # nan / +-inf -> 0
    return ops.cast(x, dtype)


class TFData2Vec2VisionForImageClassification(TFData2Vec2VisionPreTrainedModel):
    """Encoder -> pool (mean over patches, CLS, or lin-softmax) -> fc_norm -> classifier."""

    architecture = "Data2Vec2VisionForImageClassification"

    def __init__(self, config: Data2Vec2VisionConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec2_vision = build_nested(TFData2Vec2VisionModel, config)
        self.fc_norm = LayerNorm(config.hidden_size, eps=config.fc_norm_eps) if config.use_fc_norm else None
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, last_hidden_state):
        mode = self.config.pooling_mode
        if mode == "cls":
            x = last_hidden_state[:, 0]
        else:
            patches = last_hidden_state[:, self.config.num_extra_tokens :]
            x = ops.mean(patches, axis=1) if mode == "mean" else lin_softmax_pool(patches)
        return self.fc_norm(x) if self.fc_norm is not None else x

    @unpack_inputs
    @document_inputs("Data2Vec2VisionForImageClassification")
    def call(self, pixel_values=None, labels=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_vision(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, training=training,
        )
        logits = self.classifier(self.pool(base.last_hidden_state))
        out = ImageClassifierOutput(None, logits, base.hidden_states, base.attentions)
        if labels is not None:
            out.loss = self.loss_from_outputs(out, labels)
        return finish(out, return_dict)


# -------------------------------------------------------------------------------- audio


class TFData2Vec2GroupNorm(Layer):
    """GroupNorm(C, C) on (B, T, C): each channel normalised over time, float32, eps 1e-5."""

    def __init__(self, dim: int, eps: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta", autocast=False)

    def call(self, x):
        dtype = x.dtype
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=1, keepdims=True)
        var = ops.mean(ops.square(x - mean), axis=1, keepdims=True)
        return ops.cast((x - mean) * ops.rsqrt(var + self.eps) * self.gamma + self.beta, dtype)


class TFData2Vec2AudioGroupNormConvLayer(Layer):
    """fairseq ``extractor_mode='default'``: conv -> GroupNorm (first layer only) -> activation."""

    def __init__(self, config: Data2Vec2AudioConfig, layer_id: int, **kwargs):
        super().__init__(**kwargs)
        in_ch = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_ch = config.conv_dim[layer_id]
        self.conv = Conv1d(
            in_ch, out_ch, config.conv_kernel[layer_id], stride=config.conv_stride[layer_id], bias=config.conv_bias
        )
        self.layer_norm = TFData2Vec2GroupNorm(out_ch) if layer_id == 0 else None
        self.activation = Activation(config.feat_extract_activation)

    def call(self, x):
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.activation(x)


class TFData2Vec2AudioFeatureEncoder(TFData2VecAudioFeatureEncoder):
    """Raw waveform (B, samples) -> (B, frames, channels): 1.0's feature encoder (gradient
    checkpointing included), its conv layers 1.0's in "layer" mode, GroupNorm ones in "group" mode."""

    @staticmethod
    def conv_layer(config: Data2Vec2AudioConfig, layer_id: int) -> Layer:
        layer = TFData2VecAudioConvLayer if config.feat_extract_norm == "layer" else TFData2Vec2AudioGroupNormConvLayer
        return layer(config, layer_id)


class TFData2Vec2AudioFeatureProjection(Layer):
    """LayerNorm over conv channels -> Linear to hidden_size: (B, T, conv_dim[-1]) -> (B, T, D).

    Args:
        config: the model's ``Data2Vec2AudioConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2Vec2AudioConfig, **kwargs):
        super().__init__(**kwargs)
        self.layer_norm = LayerNorm(config.conv_dim[-1])
        self.projection = Linear(config.conv_dim[-1], config.hidden_size)

    def call(self, x):
        return self.projection(self.layer_norm(x))


class TFData2Vec2AudioEncoder(TFData2Vec2Encoder):
    """The shared encoder plus the relative positional convs (``x + pos_conv(x)``) in front."""

    def __init__(self, config: Data2Vec2AudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.pos_conv_layer_norm = LayerNorm(config.hidden_size) if config.conv_pos_pre_layer_norm else None
        self.pos_conv_embed = TFData2VecAudioPositionalConvEmbedding(config)

    def call(self, x, keep=None, alibi=None, output_hidden_states=False, output_attentions=False, training=False):
        pos_in = self.pos_conv_layer_norm(x) if self.pos_conv_layer_norm is not None else x
        x = x + self.pos_conv_embed(pos_in)
        return super().call(x, keep=keep, alibi=alibi, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions, training=training)


def sequence_alibi(config, length):
    """(H_alibi, T, T) unscaled 1-D ALiBi bias (slopes from d2v_common; works for symbolic T)."""
    pos = ops.arange(length, dtype="float32")
    distances = -ops.abs(pos[None, :] - pos[:, None])
    return ops.convert_to_tensor(D.alibi_slopes(config.alibi_heads))[:, None, None] * distances[None]


class TFData2Vec2AudioPreTrainedModel(TFData2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 Keras audio classes: config class, weight prefix, input name.

    Also builds the frame mask from a sample-level attention_mask and runs the heads' encoder call.

    Args:
        config: a ``Data2Vec2AudioConfig``; it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def frame_mask(self, attention_mask, frames):
        """Sample-level keep-mask (B, samples) -> frame-level keep-mask (B, frames)."""
        lengths = D.frame_lengths(self.config, ops.sum(ops.cast(attention_mask, "int32"), axis=-1))
        return ops.arange(frames)[None, :] < lengths[:, None]

    def freeze_feature_encoder(self) -> None:
        """Make the conv feature encoder non-trainable (compile again afterwards)."""
        encoder = getattr(self, self.base_model_prefix, self)  # a head's encoder, or the model itself
        encoder.feature_extractor.trainable = False

    def _encode(self, input_values, attention_mask, output_attentions, output_hidden_states, training):
        """The heads' call of their encoder (``self.data2vec2_audio``), outputs as a dict."""
        return self.data2vec2_audio(
            input_values, attention_mask=attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, training=training,
        )


class TFData2Vec2AudioModel(TFData2Vec2AudioPreTrainedModel):
    """Speech encoder: ``last_hidden_state`` (B, frames, D) for every frame (padded ones too)."""

    architecture = "Data2Vec2AudioModel"

    def __init__(self, config: Data2Vec2AudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.feature_extractor = TFData2Vec2AudioFeatureEncoder(config)
        self.feature_projection = TFData2Vec2AudioFeatureProjection(config)
        self.encoder = TFData2Vec2AudioEncoder(config)
        self.post_init()

    @unpack_inputs
    @document_inputs("Data2Vec2AudioModel")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        input_values = ops.convert_to_tensor(input_values)
        D.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        features = self.feature_extractor(input_values, training=training)
        keep = None
        if attention_mask is not None:
            attention_mask = ops.convert_to_tensor(attention_mask)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_values.shape))
            keep = self.frame_mask(attention_mask, ops.shape(features)[1])
        x = self.feature_projection(features)
        alibi = sequence_alibi(self.config, ops.shape(x)[1]) if self.config.use_alibi else None
        x, hidden, attentions = self.encoder(x, keep=keep, alibi=alibi, output_hidden_states=output_hidden_states,
                                             output_attentions=output_attentions, training=training)
        return finish(Wav2Vec2BaseModelOutput(x, features, hidden, attentions), return_dict)


def blank_logit(config: Data2Vec2AudioConfig, logits):
    """fairseq's blank weight on logit 0 (a no-op at the default ``blank_weight=0``)."""
    if config.blank_weight == 0:
        return logits
    first = logits[..., :1]
    blank = first + config.blank_weight if config.blank_mode == "add" else ops.full_like(first, config.blank_weight)
    return ops.concatenate([blank, logits[..., 1:]], axis=-1)


class TFData2Vec2AudioForCTC(TFData2Vec2AudioPreTrainedModel):
    """Encoder -> dropout -> per-frame logits (B, frames, V) (+ the blank weight); CTC loss with
    blank = pad_token_id."""

    architecture = "Data2Vec2AudioForCTC"

    def __init__(self, config: Data2Vec2AudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec2_audio = build_nested(TFData2Vec2AudioModel, config)
        self.dropout = Dropout(config.final_dropout)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def ctc_input_lengths(self, input_values, attention_mask=None):
        """Valid output frames per row (the conv length formula on the valid samples)."""
        if attention_mask is None:
            samples = ops.full((ops.shape(input_values)[0],), ops.shape(input_values)[1], dtype="int32")
        else:
            samples = ops.sum(ops.cast(attention_mask, "int32"), axis=-1)
        return ops.maximum(D.frame_lengths(self.config, samples), 0)

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        lengths = outputs._input_lengths
        if is_eager(labels) and is_eager(lengths):
            A.check_ctc_labels(self.config, np.asarray(labels), np.asarray(lengths))
        else:
            check_ctc_labels_in_graph(self.config, labels, lengths)
        return ctc_loss(
            outputs.logits, labels, lengths, A.ctc_blank(self.config), self.config.ctc_loss_reduction,
            self.config.ctc_zero_infinity,
        )

    @unpack_inputs
    @document_inputs("Data2Vec2AudioForCTC")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states, training)
        logits = blank_logit(self.config, self.lm_head(self.dropout(base.last_hidden_state, training=training)))
        out = CausalLMOutput(None, logits, base.hidden_states, base.attentions)
        # kept for the loss when Keras passes the labels separately (fit with y)
        out._input_lengths = self.ctc_input_lengths(ops.convert_to_tensor(input_values), attention_mask)
        if labels is not None:
            out.loss = self.loss_from_outputs(out, labels)
        return finish(out, return_dict)


class TFData2Vec2AudioForSequenceClassification(TFData2Vec2AudioPreTrainedModel):
    """Projector -> mean over valid frames -> classifier."""

    architecture = "Data2Vec2AudioForSequenceClassification"

    def __init__(self, config: Data2Vec2AudioConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec2_audio = build_nested(TFData2Vec2AudioModel, config)
        self.projector = Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    @unpack_inputs
    @document_inputs("Data2Vec2AudioForSequenceClassification")
    def call(self, input_values=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, labels=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states, training)
        x = self.projector(base.last_hidden_state)
        if attention_mask is None:
            pooled = ops.mean(x, axis=1)
        else:
            keep = ops.cast(self.frame_mask(ops.convert_to_tensor(attention_mask), ops.shape(x)[1]), x.dtype)
            count = ops.maximum(ops.sum(keep, axis=1, keepdims=True), 1.0)
            pooled = ops.sum(x * ops.expand_dims(keep, -1), axis=1) / count
        out = SequenceClassifierOutput(None, self.classifier(pooled), base.hidden_states, base.attentions)
        if labels is not None:
            out.loss = self.loss_from_outputs(out, labels)
        return finish(out, return_dict)


# --------------------------------------------------------------------------------- text


class TFData2Vec2TextEmbeddings(Layer):
    """Token embeddings (x sqrt(D) if ``scale_embedding``) + fairseq positions -> LayerNorm."""

    def __init__(self, config: Data2Vec2TextConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = None
        self._sinusoidal = None
        if config.use_position_embeddings:
            if config.use_learned_position_embeddings:
                self.position_embeddings = Embedding(config.position_table_rows, config.hidden_size)
            else:
                self._sinusoidal = D.sinusoidal_positions(
                    config.position_table_rows, config.hidden_size, config.pad_token_id
                )
        self.layer_norm = LayerNorm(config.hidden_size) if config.use_embedding_layer_norm else None
        self.scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0

    def call(self, input_ids):
        # padding_idx as fairseq: the pad rows of both tables get no gradient (pads look up
        # token row pad and position row pad)
        is_pad = ops.expand_dims(ops.equal(input_ids, self.config.pad_token_id), -1)
        x = self.word_embeddings(input_ids)
        x = ops.where(is_pad, ops.stop_gradient(x), x)
        if self.scale != 1.0:
            x = x * self.scale
        if self.config.use_position_embeddings:
            not_pad = ops.cast(ops.not_equal(input_ids, self.config.pad_token_id), "int32")
            positions = ops.cumsum(not_pad, axis=1) * not_pad + self.config.pad_token_id
            if self.position_embeddings is not None:
                learned = self.position_embeddings(positions)
                x = x + ops.where(is_pad, ops.stop_gradient(learned), learned)
            else:
                x = x + ops.take(ops.convert_to_tensor(self._sinusoidal), positions, axis=0)
        return self.layer_norm(x) if self.layer_norm is not None else x


class TFData2Vec2TextPreTrainedModel(TFData2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 Keras text classes: config class, weight prefix, input name.

    Args:
        config: a ``Data2Vec2TextConfig``; it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2Vec2TextConfig
    base_model_prefix = "data2vec2_text"
    main_input_name = "input_ids"


class TFData2Vec2TextModel(TFData2Vec2TextPreTrainedModel):
    """Text encoder: ``last_hidden_state`` (B, T, D); without ``attention_mask`` pads are masked."""

    architecture = "Data2Vec2TextModel"

    def __init__(self, config: Data2Vec2TextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.embeddings = TFData2Vec2TextEmbeddings(config)
        self.encoder = TFData2Vec2Encoder(config)
        self.post_init()

    @unpack_inputs
    @document_inputs("Data2Vec2TextModel")
    def call(self, input_ids=None, attention_mask=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        input_ids = ops.convert_to_tensor(input_ids)
        if is_eager(input_ids):
            D.check_input_ids(self.config, np.asarray(input_ids))
        if attention_mask is None:
            keep = ops.not_equal(input_ids, self.config.pad_token_id)
        else:
            attention_mask = ops.convert_to_tensor(attention_mask)
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_ids.shape))
            keep = ops.cast(attention_mask, "bool")
        x = self.embeddings(input_ids)
        alibi = sequence_alibi(self.config, ops.shape(x)[1]) if self.config.use_alibi else None
        x, hidden, attentions = self.encoder(x, keep=keep, alibi=alibi, output_hidden_states=output_hidden_states,
                                             output_attentions=output_attentions, training=training)
        return finish(BaseModelOutput(x, hidden, attentions), return_dict)


class TFData2Vec2TextClassificationHead(Layer):
    """RoBERTa-style: first token -> dropout -> dense -> activation -> dropout -> out_proj."""

    def __init__(self, config: Data2Vec2TextConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(config.hidden_size, config.classifier_width)
        self.activation = Activation(config.classifier_activation)
        self.dropout = Dropout(config.classifier_dropout)
        self.out_proj = Linear(config.classifier_width, config.num_labels)

    def call(self, x, training=False):
        x = self.activation(self.dense(self.dropout(x[:, 0], training=training)))
        return self.out_proj(self.dropout(x, training=training))


class TFData2Vec2TextForSequenceClassification(TFData2Vec2TextPreTrainedModel):
    """Text encoder -> RoBERTa-style head on the first token (dropout -> dense -> activation ->
    dropout -> out_proj): logits (B, num_labels); with ``labels``, the classification loss too.

    Args:
        config: a ``Data2Vec2TextConfig``; ``num_labels``, ``classifier_width``,
            ``classifier_activation`` and ``classifier_dropout`` size the head.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Examples:
    ```python no-run
    import numpy as np
    from d2v_tf import Data2Vec2TextConfig, TFData2Vec2TextForSequenceClassification

    config = Data2Vec2TextConfig(vocab_size=25, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16, num_labels=3)
    model = TFData2Vec2TextForSequenceClassification(config)
    logits = model(np.array([[0, 5, 2, 1]])).logits  # (1, 3)
    ```
    """

    architecture = "Data2Vec2TextForSequenceClassification"

    def __init__(self, config: Data2Vec2TextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec2_text = build_nested(TFData2Vec2TextModel, config)
        self.classifier = TFData2Vec2TextClassificationHead(config)
        self.post_init()

    @unpack_inputs
    @document_inputs("Data2Vec2TextForSequenceClassification")
    def call(self, input_ids=None, attention_mask=None, labels=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_text(
            input_ids, attention_mask=attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, training=training,
        )
        out = SequenceClassifierOutput(None, self.classifier(base.last_hidden_state, training=training),
                                       base.hidden_states, base.attentions)
        if labels is not None:
            out.loss = self.loss_from_outputs(out, labels)
        return finish(out, return_dict)
