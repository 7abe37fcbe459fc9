"""data2vec 2.0 in PyTorch: the shared post-LN encoder, then vision, audio and text models.

Module names equal the canonical names of ``d2v_common.spec.data2vec2`` (checked at build
time). Formulas both frameworks share (ALiBi slopes and distances, sin-cos tables, frame
lengths, input checks) come from ``d2v_common.data2vec2``; the Keras twin is
``d2v_tf/data2vec2.py``, kept section for section.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from d2v_common.models import audio as A
from d2v_common import data2vec2 as D
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.input_types import check_input_type
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
from d2v_torch.audio import (
    Data2VecAudioConvLayer, Data2VecAudioFeatureEncoder, Data2VecAudioPositionalConvEmbedding,
)
from d2v_torch.base import Data2VecPreTrainedModel
from d2v_torch.layers import (
    Activation, Linear, attention, checkpointed, classification_loss, conv1d_time_major, is_tracing, padding_bias,
)

# ------------------------------------------------------------------------------ encoder


def _layer_norm(config, dim: int | None = None) -> nn.LayerNorm:
    dim = dim or config.hidden_size
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, elementwise_affine=config.layer_norm_affine)


class Data2Vec2Attention(nn.Module):
    """Fused qkv projection -> softmax(q k^T / sqrt(d) + bias) v -> output projection."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv_proj = Linear(d, 3 * d)
        self.out_proj = Linear(d, d)
        self.attention_dropout = config.attention_dropout
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, output_attentions: bool = False):
        """(output, attention weights or None)."""
        b, t, d = x.shape
        # unbind, not three indexings: its backward writes the gradient once instead of
        # zero-filling and accumulating it three times; on the (B, T, 3, H, d) axis, so that
        # gradient lands in the projection's own layout (no second copy to make it 2-D)
        qkv = self.qkv_proj(x).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = (y.transpose(1, 2) for y in qkv.unbind(2))
        context, weights = attention(q, k, v, bias, dropout=self.attention_dropout,
                                     training=self.training, need_weights=output_attentions)
        return self.dropout(self.out_proj(context)), weights


class Data2Vec2FeedForward(nn.Module):
    """Dense to intermediate_size -> activation -> dropout -> dense back -> dropout (both dropouts
    ``activation_dropout``): (B, T, D) -> (B, T, D).

    Args:
        config: the model's data2vec 2.0 config (``Data2Vec2VisionConfig``,
            ``Data2Vec2AudioConfig`` or ``Data2Vec2TextConfig``).
    """

    def __init__(self, config):
        super().__init__()
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size)
        self.activation = Activation(config.hidden_act)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.activation(self.intermediate_dense(x)))
        return self.dropout(self.output_dense(x))


class Data2Vec2Layer(nn.Module):
    """fairseq AltBlock. Post-LN (released models): ``x = LN1(x + attn(x)); x = LN2(x + mlp(x))``.

    ``layer_norm_first`` reproduces upstream exactly, including its quirk: the MLP branch
    replaces the residual stream (``x = 2 * mlp(LN2(x))``, dropout aside).
    """

    def __init__(self, config):
        super().__init__()
        self.pre_norm = config.layer_norm_first
        self.attention = Data2Vec2Attention(config)
        self.layer_norm = _layer_norm(config)
        self.feed_forward = Data2Vec2FeedForward(config)
        self.final_layer_norm = _layer_norm(config)
        self.post_mlp_dropout = nn.Dropout(config.post_mlp_dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, output_attentions: bool = False):
        """(output, attention weights or None)."""
        if self.pre_norm:
            attn, weights = self.attention(self.layer_norm(x), bias, output_attentions)
            x = x + attn
            r = x = self.feed_forward(self.final_layer_norm(x))
            return r + self.post_mlp_dropout(x), weights
        attn, weights = self.attention(x, bias, output_attentions)
        x = self.layer_norm(x + attn)
        return self.final_layer_norm(x + self.post_mlp_dropout(self.feed_forward(x))), weights


class Data2Vec2Encoder(nn.Module):
    """Extra tokens -> context encoder (LayerNorm, prenet layers) -> main layers (-> final LN).

    ``forward`` takes the modality's embedded sequence, a (B, T) keep-mask (1 = attend) and the
    unscaled (H_alibi, T, T) ALiBi bias, both over the sequence without extra tokens.
    """

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.config = config
        n = config.num_extra_tokens
        self.extra_tokens = nn.Parameter(torch.zeros(1, n, d)) if n else None
        if config.use_alibi:
            scale = torch.full(config.alibi_scale_shape, config.alibi_scale)
            self.alibi_scale = nn.Parameter(scale, requires_grad=config.learned_alibi_scale)
        else:
            self.alibi_scale = None
        self.layer_norm = _layer_norm(config) if has_context_norm(config) else None
        self.prenet_layers = nn.ModuleList([Data2Vec2Layer(config) for _ in range(config.num_prenet_layers)])
        self.layers = nn.ModuleList([Data2Vec2Layer(config) for _ in range(config.num_hidden_layers)])
        self.final_layer_norm = _layer_norm(config) if config.layer_norm_first else None
        self.gradient_checkpointing = False

    def _alibi_per_layer(self, alibi: torch.Tensor) -> list[torch.Tensor]:
        """The (1, H, T, T) bias each layer adds: ALiBi times its clamped scale, zero for heads
        past ``num_alibi_heads``."""
        scales = self.alibi_scale.clamp_min(0).to(alibi.dtype)  # (L or 1, 1, Ha or 1, 1, 1)
        pad_heads = self.config.num_attention_heads - alibi.shape[0]
        out = []
        for i in range(len(self.prenet_layers) + len(self.layers)):
            bias = alibi[None] * scales[i if scales.shape[0] > 1 else 0]
            out.append(F.pad(bias, (0, 0, 0, 0, 0, pad_heads)) if pad_heads else bias)
        return out

    def prepend_extra_tokens(self, x, keep=None, alibi=None):
        """The learned extra tokens (the image CLS) in front of ``x``; ``keep`` and the ALiBi
        bias grow to cover them (always kept, no bias)."""
        n = self.config.num_extra_tokens
        if n:
            x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            if keep is not None:
                keep = F.pad(keep, (n, 0), value=True)
            if alibi is not None:
                alibi = F.pad(alibi, (n, 0, n, 0))
        return x, keep, alibi

    def forward(self, x, keep=None, alibi=None, output_hidden_states: bool = False, output_attentions: bool = False):
        """(output, main-layer hidden states or None, main-layer attention weights or None)."""
        n = self.config.num_extra_tokens
        x, keep, alibi = self.prepend_extra_tokens(x, keep, alibi)
        # eager: no bias when every position is kept (the fused attention path, as before);
        # a traced graph cannot branch on the mask's values, so it always adds the bias (zeros
        # where kept: the same scores)
        everything_kept = keep is None or (not is_tracing() and bool(keep.all()))
        pad = None if everything_kept else padding_bias(keep, x.dtype)
        biases = self._alibi_per_layer(alibi) if alibi is not None else None
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        hidden_states, attentions = [], []
        for i, layer in enumerate([*self.prenet_layers, *self.layers]):
            if i == len(self.prenet_layers) and output_hidden_states:
                hidden_states.append(x)
            bias = pad
            if biases is not None:
                bias = biases[i] if pad is None else biases[i] + pad
            if self.gradient_checkpointing and self.training:
                x, weights = checkpointed(self, layer, x, bias, output_attentions)
            else:
                x, weights = layer(x, bias, output_attentions)
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


class Data2Vec2PreTrainedModel(Data2VecPreTrainedModel):
    """Base of the data2vec 2.0 PyTorch classes."""


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ------------------------------------------------------------------------------- vision


class Data2Vec2VisionPatchEmbeddings(nn.Module):
    """Stride-``patch_size`` convolution, row-major flatten, optional Linear to hidden_size."""

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__()
        width = config.patch_embed_dim or config.hidden_size
        p = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, width, p, stride=p)
        self.dense = Linear(width, config.hidden_size) if width != config.hidden_size else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projection(pixel_values).flatten(2).transpose(1, 2)
        return self.dense(x) if self.dense is not None else x


class Data2Vec2VisionEmbeddings(nn.Module):
    """Patch embeddings plus, with ``use_fixed_positions``, a fixed (not trained) position table:
    (B, C, H, W) -> (B, N, D).

    Args:
        config: the model's ``Data2Vec2VisionConfig``.
    """

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__()
        self.patch_embeddings = Data2Vec2VisionPatchEmbeddings(config)
        if config.use_fixed_positions:
            table = torch.zeros(1, config.num_patches, config.hidden_size)
            self.position_embeddings = nn.Parameter(table, requires_grad=False)
        else:
            self.position_embeddings = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(pixel_values)
        return x + self.position_embeddings if self.position_embeddings is not None else x


class Data2Vec2VisionPreTrainedModel(Data2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 PyTorch vision classes: config class, weight prefix, input name.

    Args:
        config: a ``Data2Vec2VisionConfig``; it sizes every layer.
    """

    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"


class Data2Vec2VisionModel(Data2Vec2VisionPreTrainedModel):
    """Image encoder: ``last_hidden_state`` (B, extra tokens + patches, D), CLS first.

    Examples:
        >>> config = Data2Vec2VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        ...                                intermediate_size=64, image_size=32, patch_size=8)
        >>> Data2Vec2VisionModel(config)(torch.zeros(1, 3, 32, 32)).last_hidden_state.shape
        torch.Size([1, 17, 32])
    """

    architecture = "Data2Vec2VisionModel"

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__(config)
        self.embeddings = Data2Vec2VisionEmbeddings(config)
        self.encoder = Data2Vec2Encoder(config)
        self._alibi = torch.from_numpy(D.image_alibi_bias(config)) if config.use_alibi else None
        self.post_init()

    @document_inputs("Data2Vec2VisionModel")
    def forward(self, pixel_values, output_attentions=None, output_hidden_states=None, return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        self._check_value_input("pixel_values", pixel_values)
        D.check_pixel_values(self.config, tuple(pixel_values.shape), pixel_values.dtype)
        x = self.embeddings(pixel_values)
        alibi = None if self._alibi is None else self._alibi.to(x.device)
        x, hidden, attentions = self.encoder(x, None, alibi, output_hidden_states, output_attentions)
        return finish(BaseModelOutput(x, hidden, attentions), return_dict)


def lin_softmax_pool(x: torch.Tensor) -> torch.Tensor:
    """fairseq's LIN_SOFTMAX pooling over tokens (dim 1), in float32."""
    dtype = x.dtype
    x = F.logsigmoid(x.float())
    x = torch.logsumexp(x + x, dim=1) - torch.logsumexp(x + 1e-6, dim=1)
    x = x.clamp(max=0)
    x = x - torch.log(-torch.expm1(x))
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).to(dtype)


class Data2Vec2VisionForImageClassification(Data2Vec2VisionPreTrainedModel):
    """Encoder -> pool (mean over patches, CLS, or lin-softmax) -> fc_norm -> classifier."""

    architecture = "Data2Vec2VisionForImageClassification"

    def __init__(self, config: Data2Vec2VisionConfig):
        super().__init__(config)
        self.data2vec2_vision = build_nested(Data2Vec2VisionModel, config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.fc_norm_eps) if config.use_fc_norm else None
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pool(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """The classifier's input (B, D) from the encoder output."""
        mode = self.config.pooling_mode
        if mode == "cls":
            x = last_hidden_state[:, 0]
        else:
            patches = last_hidden_state[:, self.config.num_extra_tokens :]
            x = patches.mean(dim=1) if mode == "mean" else lin_softmax_pool(patches)
        return self.fc_norm(x) if self.fc_norm is not None else x

    @document_inputs("Data2Vec2VisionForImageClassification")
    def forward(self, pixel_values, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_vision(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.pool(base.last_hidden_state))
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return finish(ImageClassifierOutput(loss, logits, base.hidden_states, base.attentions), return_dict)


# -------------------------------------------------------------------------------- audio


class Data2Vec2AudioGroupNormConvLayer(Data2VecAudioConvLayer):
    """fairseq ``extractor_mode='default'``: conv -> GroupNorm(C, C) (first layer only) -> activation."""

    def __init__(self, config: Data2Vec2AudioConfig, layer_id: int):
        super().__init__(config, layer_id)
        out_ch = config.conv_dim[layer_id]
        self.layer_norm = nn.GroupNorm(out_ch, out_ch) if layer_id == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv1d_time_major(self.conv, x)
        if self.layer_norm is not None:
            x = self.layer_norm(x.float()).to(x.dtype)
        return self.activation(x)


class Data2Vec2AudioFeatureEncoder(Data2VecAudioFeatureEncoder):
    """Raw waveform (B, samples) -> (B, channels, frames): 1.0's feature encoder (gradient
    checkpointing included), its conv layers 1.0's in "layer" mode, GroupNorm ones in "group" mode."""

    @staticmethod
    def conv_layer(config: Data2Vec2AudioConfig, layer_id: int) -> nn.Module:
        layer = Data2VecAudioConvLayer if config.feat_extract_norm == "layer" else Data2Vec2AudioGroupNormConvLayer
        return layer(config, layer_id)


class Data2Vec2AudioFeatureProjection(nn.Module):
    """LayerNorm over conv channels (eps 1e-5) -> Linear to hidden_size."""

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1])
        self.projection = Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class Data2Vec2AudioEncoder(Data2Vec2Encoder):
    """The shared encoder plus the relative positional convs (``x + pos_conv(x)``) in front."""

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        self.pos_conv_layer_norm = nn.LayerNorm(config.hidden_size) if config.conv_pos_pre_layer_norm else None
        self.pos_conv_embed = Data2VecAudioPositionalConvEmbedding(config)

    def forward(self, x, keep=None, alibi=None, output_hidden_states: bool = False, output_attentions: bool = False):
        pos_in = self.pos_conv_layer_norm(x) if self.pos_conv_layer_norm is not None else x
        x = x + self.pos_conv_embed(pos_in)
        return super().forward(x, keep, alibi, output_hidden_states, output_attentions)


def sequence_alibi(config, length, device) -> torch.Tensor:
    """(H_alibi, T, T) unscaled 1-D ALiBi bias, built with tensor ops from the (possibly
    symbolic, in a traced graph) length: float32 slopes times -|i - j|, the values
    ``D.alibi_slopes`` x ``D.alibi_distances_1d`` give."""
    pos = torch.arange(length, device=device)
    distances = -(pos[None, :] - pos[:, None]).abs().to(torch.float32)
    slopes = torch.from_numpy(D.alibi_slopes(config.alibi_heads)).to(device)
    return slopes[:, None, None] * distances[None]


class Data2Vec2AudioPreTrainedModel(Data2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 PyTorch audio classes: config class, weight prefix, input name.

    Also builds the frame mask from a sample-level attention_mask.

    Args:
        config: a ``Data2Vec2AudioConfig``; it sizes every layer.
    """

    config_class = Data2Vec2AudioConfig
    base_model_prefix = "data2vec2_audio"
    main_input_name = "input_values"

    def frame_mask(self, attention_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """Sample-level keep-mask (B, samples) -> frame-level keep-mask (B, frames)."""
        lengths = D.frame_lengths(self.config, attention_mask.long().sum(-1))
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder (its weights stay fixed in training)."""
        encoder = getattr(self, self.base_model_prefix, self)  # a head's encoder, or the model itself
        for p in encoder.feature_extractor.parameters():
            p.requires_grad = False


class Data2Vec2AudioModel(Data2Vec2AudioPreTrainedModel):
    """Speech encoder: ``last_hidden_state`` (B, frames, D) for every frame (padded ones too:
    as upstream, padded samples are not zeroed, only masked as attention keys).

    Examples:
        >>> config = Data2Vec2AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        ...     intermediate_size=64, conv_dim=[32, 32], conv_kernel=[10, 3], conv_stride=[5, 2],
        ...     num_conv_pos_embeddings=2, conv_pos_kernel_size=4, num_conv_pos_embedding_groups=4)
        >>> Data2Vec2AudioModel(config)(torch.zeros(1, 400)).last_hidden_state.shape
        torch.Size([1, 39, 32])
    """

    architecture = "Data2Vec2AudioModel"

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        self.feature_extractor = Data2Vec2AudioFeatureEncoder(config)
        self.feature_projection = Data2Vec2AudioFeatureProjection(config)
        self.encoder = Data2Vec2AudioEncoder(config)
        self.post_init()

    @document_inputs("Data2Vec2AudioModel")
    def forward(self, input_values, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        self._check_value_input("input_values", input_values)
        D.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        features = self.feature_extractor(input_values).transpose(1, 2)
        keep = None
        if attention_mask is not None:
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_values.shape))
            keep = self.frame_mask(attention_mask, features.shape[1])
        x = self.feature_projection(features)
        alibi = sequence_alibi(self.config, x.shape[1], x.device) if self.config.use_alibi else None
        x, hidden, attentions = self.encoder(x, keep, alibi, output_hidden_states, output_attentions)
        return finish(Wav2Vec2BaseModelOutput(x, features, hidden, attentions), return_dict)


def blank_logit(config: Data2Vec2AudioConfig, logits: torch.Tensor) -> torch.Tensor:
    """fairseq's blank weight on logit 0 (a no-op at the default ``blank_weight=0``)."""
    if config.blank_weight == 0:
        return logits
    blank = logits[..., :1] + config.blank_weight if config.blank_mode == "add" else torch.full_like(
        logits[..., :1], config.blank_weight
    )
    return torch.cat([blank, logits[..., 1:]], dim=-1)


class Data2Vec2AudioForCTC(Data2Vec2AudioPreTrainedModel):
    """Encoder -> dropout -> per-frame vocabulary logits (B, frames, V) (+ the blank weight),
    batch-major; padded frames are left as computed (fairseq's get_logits sets them to
    [0, -inf, ...] and returns time-major). CTC loss with blank = pad_token_id."""

    architecture = "Data2Vec2AudioForCTC"

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        self.data2vec2_audio = build_nested(Data2Vec2AudioModel, config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    @document_inputs("Data2Vec2AudioForCTC")
    def forward(self, input_values, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, labels=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_audio(input_values, attention_mask, output_attentions, output_hidden_states, True)
        logits = blank_logit(self.config, self.lm_head(self.dropout(base.last_hidden_state)))
        loss = None
        if labels is not None:
            blank = A.ctc_blank(self.config)
            samples = (
                attention_mask.long().sum(-1)
                if attention_mask is not None
                else torch.full((input_values.shape[0],), input_values.shape[1], dtype=torch.long)
            )
            input_lengths = D.frame_lengths(self.config, samples).clamp(min=0)
            A.check_ctc_labels(self.config, _numpy(labels), _numpy(input_lengths))
            keep = labels >= 0
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            loss = F.ctc_loss(
                log_probs, labels.masked_select(keep), input_lengths, keep.sum(-1), blank=blank,
                reduction=self.config.ctc_loss_reduction, zero_infinity=self.config.ctc_zero_infinity,
            )
        return finish(CausalLMOutput(loss, logits, base.hidden_states, base.attentions), return_dict)


class Data2Vec2AudioForSequenceClassification(Data2Vec2AudioPreTrainedModel):
    """Projector -> mean over valid frames -> classifier."""

    architecture = "Data2Vec2AudioForSequenceClassification"

    def __init__(self, config: Data2Vec2AudioConfig):
        super().__init__(config)
        self.data2vec2_audio = build_nested(Data2Vec2AudioModel, config)
        self.projector = Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    @document_inputs("Data2Vec2AudioForSequenceClassification")
    def forward(self, input_values, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, labels=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_audio(input_values, attention_mask, output_attentions, output_hidden_states, True)
        x = self.projector(base.last_hidden_state)
        if attention_mask is None:
            pooled = x.mean(dim=1)
        else:
            keep = self.frame_mask(attention_mask, x.shape[1])
            count = keep.sum(dim=1).clamp(min=1).view(-1, 1)
            pooled = x.masked_fill(~keep[..., None], 0.0).sum(dim=1) / count
        logits = self.classifier(pooled)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return finish(SequenceClassifierOutput(loss, logits, base.hidden_states, base.attentions), return_dict)


# --------------------------------------------------------------------------------- text


class Data2Vec2TextEmbeddings(nn.Module):
    """Token embeddings (x sqrt(D) if ``scale_embedding``) + fairseq positions -> LayerNorm."""

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__()
        self.config = config
        # padding_idx as fairseq: the pad rows get no gradient
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = None
        table = None  # fairseq's sinusoidal table is computed, never stored
        if config.use_position_embeddings:
            if config.use_learned_position_embeddings:
                self.position_embeddings = nn.Embedding(config.position_table_rows, config.hidden_size)
            else:
                table = torch.from_numpy(
                    D.sinusoidal_positions(config.position_table_rows, config.hidden_size, config.pad_token_id)
                )
        self.register_buffer("sinusoidal", table, persistent=False)
        self.layer_norm = nn.LayerNorm(config.hidden_size) if config.use_embedding_layer_norm else None
        self.scale = math.sqrt(config.hidden_size) if config.scale_embedding else 1.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.scale != 1.0:
            x = x * self.scale
        if self.config.use_position_embeddings:
            not_pad = (input_ids != self.config.pad_token_id).long()
            positions = torch.cumsum(not_pad, dim=1) * not_pad + self.config.pad_token_id
            table = self.position_embeddings.weight if self.position_embeddings is not None else self.sinusoidal
            x = x + F.embedding(positions, table, padding_idx=self.config.pad_token_id)
        return self.layer_norm(x) if self.layer_norm is not None else x


class Data2Vec2TextPreTrainedModel(Data2Vec2PreTrainedModel):
    """Base of the data2vec 2.0 PyTorch text classes: config class, weight prefix, input name.

    Args:
        config: a ``Data2Vec2TextConfig``; it sizes every layer.
    """

    config_class = Data2Vec2TextConfig
    base_model_prefix = "data2vec2_text"
    main_input_name = "input_ids"


class Data2Vec2TextModel(Data2Vec2TextPreTrainedModel):
    """Text encoder: ``last_hidden_state`` (B, T, D). Without ``attention_mask``, pad tokens
    (``pad_token_id``) are masked, as fairseq does.

    Examples:
        >>> config = Data2Vec2TextConfig(vocab_size=25, hidden_size=32, num_hidden_layers=1,
        ...                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
        >>> Data2Vec2TextModel(config)(torch.tensor([[0, 5, 2, 1]])).last_hidden_state.shape
        torch.Size([1, 4, 32])
    """

    architecture = "Data2Vec2TextModel"

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__(config)
        self.embeddings = Data2Vec2TextEmbeddings(config)
        self.encoder = Data2Vec2Encoder(config)
        self.post_init()

    @document_inputs("Data2Vec2TextModel")
    def forward(self, input_ids, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        check_input_type("input_ids", input_ids, framework="torch", tensor_types=torch.Tensor, integer=True)
        if not is_tracing():  # id ranges are values: a traced graph checks shapes only
            D.check_input_ids(self.config, _numpy(input_ids))
        elif input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            keep = input_ids != self.config.pad_token_id
        else:
            D.check_attention_mask(tuple(attention_mask.shape), tuple(input_ids.shape))
            keep = attention_mask.bool()
        x = self.embeddings(input_ids)
        alibi = sequence_alibi(self.config, x.shape[1], x.device) if self.config.use_alibi else None
        x, hidden, attentions = self.encoder(x, keep, alibi, output_hidden_states, output_attentions)
        return finish(BaseModelOutput(x, hidden, attentions), return_dict)


class Data2Vec2TextClassificationHead(nn.Module):
    """RoBERTa-style: first token -> dropout -> dense -> activation -> dropout -> out_proj."""

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.classifier_width)
        self.activation = Activation(config.classifier_activation)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = Linear(config.classifier_width, config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.dense(self.dropout(x[:, 0])))
        return self.out_proj(self.dropout(x))


class Data2Vec2TextForSequenceClassification(Data2Vec2TextPreTrainedModel):
    """Text encoder -> RoBERTa-style head on the first token (dropout -> dense -> activation ->
    dropout -> out_proj): logits (B, num_labels); with ``labels``, the classification loss too.

    Args:
        config: a ``Data2Vec2TextConfig``; ``num_labels``, ``classifier_width``,
            ``classifier_activation`` and ``classifier_dropout`` size the head.

    Examples:
    ```python no-run
    import torch
    from d2v_torch import Data2Vec2TextConfig, Data2Vec2TextForSequenceClassification

    config = Data2Vec2TextConfig(vocab_size=25, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16, num_labels=3)
    model = Data2Vec2TextForSequenceClassification(config)
    logits = model(torch.tensor([[0, 5, 2, 1]])).logits  # (1, 3)
    ```
    """

    architecture = "Data2Vec2TextForSequenceClassification"

    def __init__(self, config: Data2Vec2TextConfig):
        super().__init__(config)
        self.data2vec2_text = build_nested(Data2Vec2TextModel, config)
        self.classifier = Data2Vec2TextClassificationHead(config)
        self.post_init()

    @document_inputs("Data2Vec2TextForSequenceClassification")
    def forward(self, input_ids, attention_mask=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec2_text(input_ids, attention_mask, output_attentions, output_hidden_states, True)
        logits = self.classifier(base.last_hidden_state)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return finish(SequenceClassifierOutput(loss, logits, base.hidden_states, base.attentions), return_dict)
