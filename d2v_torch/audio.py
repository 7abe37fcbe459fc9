"""Data2Vec audio (wav2vec2-shaped) in PyTorch: small blocks first, the five models last.

Module names equal HF's state-dict keys (checked against ``d2v_common.spec.audio`` at build
time). Length formulas, input checks and SpecAugment masks live in ``d2v_common.models.audio`` so the
Keras twin (``d2v_tf/audio.py``, kept section for section) shares them.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
from d2v_torch.base import Data2VecPreTrainedModel, torch_seed, weighted_layer_sum
from d2v_torch.layers import (
    DEFAULT_CHECKPOINT_OPTIONS, Activation, Linear, attention, check_labels_in_range, checkpointed, conv1d_time_major,
    cross_entropy, is_tracing, padding_bias, split_heads,
)

# ------------------------------------------------------------------------- feature encoder


class Data2VecAudioConvLayer(nn.Module):
    """Strided conv -> LayerNorm over channels (torch's default eps) -> activation."""

    def __init__(self, config: Data2VecAudioConfig, layer_id: int):
        super().__init__()
        in_ch = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_ch = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            in_ch, out_ch, config.conv_kernel[layer_id], stride=config.conv_stride[layer_id], bias=config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(out_ch)
        self.activation = Activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T), stored time-major
        x = conv1d_time_major(self.conv, x)
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.activation(x)


class Data2VecAudioFeatureEncoder(nn.Module):
    """Raw waveform (B, samples) -> frames (B, channels, frames).

    Under ``gradient_checkpointing_enable()`` training recomputes each conv layer in the backward
    pass while the convs are trainable (as HF's feature encoder): at 10 s of audio their outputs
    are as large as the whole transformer's activations.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList([self.conv_layer(config, i) for i in range(len(config.conv_dim))])
        self._requires_grad = True
        self.gradient_checkpointing = False

    @staticmethod
    def conv_layer(config: Data2VecAudioConfig, layer_id: int) -> nn.Module:
        return Data2VecAudioConvLayer(config, layer_id)

    def _freeze_parameters(self) -> None:
        for p in self.parameters():
            p.requires_grad = False
        self._requires_grad = False

    def _recomputes(self) -> bool:
        return (self.gradient_checkpointing and self.training and torch.is_grad_enabled()
                and any(p.requires_grad for p in self.parameters()))  # a frozen encoder keeps nothing for backward

    def forward(self, input_values: torch.Tensor, run_layer=None) -> torch.Tensor:
        """``run_layer(layer, x)``, when given, computes each conv layer in place of ``layer(x)``
        (the pretraining step's own kernels), recomputed the same way under checkpointing."""
        x = input_values[:, None]
        if not self._recomputes():
            for layer in self.conv_layers:
                x = run_layer(layer, x) if run_layer else layer(x)
            return x
        options = getattr(self, "checkpoint_options", DEFAULT_CHECKPOINT_OPTIONS)
        if options["use_reentrant"] and not x.requires_grad:
            # reentrant checkpointing gives the weights gradients only when an input needs one
            x = x.detach().requires_grad_()
        for layer in self.conv_layers:
            x = checkpointed(self, functools.partial(run_layer, layer) if run_layer else layer, x)
        return x


class Data2VecAudioFeatureProjection(nn.Module):
    """LayerNorm over the conv channels -> Linear to hidden_size -> dropout: (B, T, conv_dim[-1]) -> (B, T, D).

    Returns the projected frames and the normalised features (``extract_features``).

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (projected frames, normalised features); the latter is ``extract_features``."""
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed)), normed


# ----------------------------------------------------------------------- positional convs


class Data2VecAudioPositionalConvLayer(nn.Module):
    """Grouped "same" conv (one frame trimmed for even kernels) -> LayerNorm without affine -> activation."""

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        k = config.conv_pos_kernel_size
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.trim = 1 if k % 2 == 0 else 0
        self.layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
        self.activation = Activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T), stored time-major
        x = conv1d_time_major(self.conv, x)
        if self.trim:
            x = x[:, :, : -self.trim]
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.activation(x)


class Data2VecAudioPositionalConvEmbedding(nn.Module):
    """Relative positions from ``num_conv_pos_embeddings`` grouped conv layers: (B, T, D) -> (B, T, D).

    The encoder adds the result to its input.

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            [Data2VecAudioPositionalConvLayer(config) for _ in range(config.num_conv_pos_embeddings)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = x.transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)


# ------------------------------------------------------------------------------- encoder


class Data2VecAudioAttention(nn.Module):
    """Multi-head self-attention (q, k, v and out projections, scores scaled by head_dim ** -0.5):
    (B, T, D) -> (B, T, D), plus the attention weights when asked. ``bias`` is an additive key mask.

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.scale = (hidden // config.num_attention_heads) ** -0.5
        self.dropout = config.attention_dropout
        self.k_proj = Linear(hidden, hidden)
        self.v_proj = Linear(hidden, hidden)
        self.q_proj = Linear(hidden, hidden)
        self.out_proj = Linear(hidden, hidden)

    def forward(self, x, bias=None, output_attentions=False):
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        context, weights = attention(q, k, v, bias, None, self.dropout, self.training, output_attentions, self.scale)
        return self.out_proj(context), weights


class Data2VecAudioFeedForward(nn.Module):
    """Dense to intermediate_size -> activation -> dropout (``activation_dropout``) -> dense back ->
    dropout (``hidden_dropout``): (B, T, D) -> (B, T, D).

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = Activation(config.hidden_act)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x):
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class Data2VecAudioEncoderLayer(nn.Module):
    """Post-norm block: attention -> dropout -> residual -> LayerNorm -> feed-forward residual -> LayerNorm."""

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        eps = config.layer_norm_eps
        self.attention = Data2VecAudioAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.feed_forward = Data2VecAudioFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)

    def forward(self, x, bias=None, output_attentions=False):
        """(output, attention weights, feed-forward output before the residual)."""
        attn, weights = self.attention(x, bias, output_attentions)
        x = self.layer_norm(x + self.dropout(attn))
        ffn = self.feed_forward(x)
        return self.final_layer_norm(x + ffn), weights, ffn


class Data2VecAudioEncoder(nn.Module):
    """Positional convs (added) -> LayerNorm -> dropout -> post-norm encoder layers: (B, T, D) -> (B, T, D).

    ``frame_mask`` (B, T) zeroes padded frames and masks them as attention keys; in training,
    ``layerdrop`` skips whole layers. Returns the last state and the recorded hidden states,
    attentions and feed-forward outputs (None unless asked).

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = Data2VecAudioPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([Data2VecAudioEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, x, frame_mask=None, output_attentions=False, output_hidden_states=False,
                output_ffn_states=False):
        bias = None
        if frame_mask is not None:
            # Padded frames are zeroed, but the positional convs below still see them (as in HF).
            x = x.masked_fill(~frame_mask[..., None], 0.0)
            bias = padding_bias(frame_mask, x.dtype)
        x = x + self.pos_conv_embed(x)
        x = self.dropout(self.layer_norm(x))
        record = EncoderRecord(output_hidden_states, output_attentions, output_ffn_states)
        for layer in self.layers:
            record.layer_input(x)
            weights = ffn = None
            if not (self.training and self.layerdrop > 0 and float(torch.rand([])) < self.layerdrop):
                if self.gradient_checkpointing and self.training:
                    x, weights, ffn = checkpointed(self, layer, x, bias, output_attentions)
                else:
                    x, weights, ffn = layer(x, bias, output_attentions)
            record.layer_output(weights, ffn=ffn)  # None for a layer that layerdrop skipped, as in HF
        record.finish(x)
        return x, record.hidden_states, record.attentions, record.ffn_states


# ------------------------------------------------------------------------------- adapter


class Data2VecAudioAdapterLayer(nn.Module):
    """Strided conv to twice the width, then a GLU back to the width."""

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        width = config.output_hidden_size
        self.conv = nn.Conv1d(width, 2 * width, config.adapter_kernel_size, stride=config.adapter_stride, padding=1)

    def forward(self, x):  # (B, C, T)
        return F.glu(self.conv(x), dim=1)


class Data2VecAudioAdapter(nn.Module):
    """Optional Linear + LayerNorm to output_hidden_size, then ``num_adapter_layers`` strided conv + GLU
    layers that shorten the sequence: (B, T, D) -> (B, T', output_hidden_size). In training each conv
    layer is skipped with probability ``layerdrop``.

    Args:
        config: the model's ``Data2VecAudioConfig``.
    """

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__()
        if config.output_hidden_size != config.hidden_size:
            self.proj = Linear(config.hidden_size, config.output_hidden_size)
            self.proj_layer_norm = nn.LayerNorm(config.output_hidden_size)
        else:
            self.proj = self.proj_layer_norm = None
        self.layers = nn.ModuleList([Data2VecAudioAdapterLayer(config) for _ in range(config.num_adapter_layers)])
        self.layerdrop = config.layerdrop

    def forward(self, x):  # (B, T, C)
        if self.proj is not None:
            x = self.proj_layer_norm(self.proj(x))
        x = x.transpose(1, 2)
        for layer in self.layers:
            if not self.training or float(torch.rand([])) > self.layerdrop:
                x = layer(x)
        return x.transpose(1, 2)


# ---------------------------------------------------------------------------- head blocks


class TDNNLayer(nn.Module):
    """Dilated conv kept as a Linear (HF's checkpoint layout): weight (out, kernel * in)."""

    def __init__(self, config: Data2VecAudioConfig, layer_id: int):
        super().__init__()
        dims = config.tdnn_dim
        self.in_dim = dims[layer_id - 1] if layer_id > 0 else dims[0]
        self.out_dim = dims[layer_id]
        self.kernel_size = config.tdnn_kernel[layer_id]
        self.dilation = config.tdnn_dilation[layer_id]
        self.kernel = Linear(self.in_dim * self.kernel_size, self.out_dim)

    def forward(self, x):  # (B, T, C)
        # The Linear's input axis is (kernel tap, channel); conv1d wants (out, channel, tap).
        weight = self.kernel.weight.view(self.out_dim, self.kernel_size, self.in_dim).transpose(1, 2)
        x = F.conv1d(x.transpose(1, 2), weight, self.kernel.bias, dilation=self.dilation)
        return F.relu(x.transpose(1, 2))


class AMSoftmaxLoss(nn.Module):
    """Additive-margin softmax: cosine logits, margin on the target class, scaled."""

    def __init__(self, input_dim: int, num_labels: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.scale, self.margin, self.num_labels = scale, margin, num_labels
        self.weight = nn.Parameter(torch.zeros(input_dim, num_labels))

    def forward(self, x, labels):
        labels = labels.reshape(-1).long()
        check_labels_in_range(labels, self.num_labels, ignore_index=None)  # one_hot has no ignore index
        cos = torch.mm(F.normalize(x, dim=1), F.normalize(self.weight, dim=0))
        target = F.one_hot(labels, self.num_labels).bool()
        logits = self.scale * torch.where(target, cos - self.margin, cos)
        return F.cross_entropy(logits, labels)


def statistics_pooling(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[mean, unbiased std] over the first ``lengths`` frames of each row -> (B, 2C)."""
    keep = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[..., None]
    n = lengths.to(x.dtype)[:, None]
    # An all-padding row (no frames) pools to zeros instead of 0 / 0.
    mean = (x * keep).sum(1) / n.clamp(min=1)
    var = (((x - mean[:, None]) * keep) ** 2).sum(1) / (n - 1).clamp(min=1)
    # A constant channel (a dead ReLU) has std 0 and, as with torch.std, gets no gradient
    # instead of sqrt's infinite one.
    positive = var > 0
    std = torch.where(positive, torch.where(positive, var, torch.ones_like(var)).sqrt(), torch.zeros_like(var))
    return torch.cat([mean, std], dim=-1)


def first_argmax(labels: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum along the last axis (torch.argmax's documented tie rule)."""
    return torch.argmax(labels, dim=-1)


# --------------------------------------------------------------------------------- models


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class Data2VecAudioPreTrainedModel(Data2VecPreTrainedModel):
    """Base of the PyTorch audio classes: config class, input name, audio helpers (not built directly).

    Args:
        config: a ``Data2VecAudioConfig``; it sizes every layer.

    Examples:
    ```python no-run
    import torch
    from d2v_torch import Data2VecAudioConfig, Data2VecAudioModel, Data2VecAudioPreTrainedModel

    config = Data2VecAudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64)
    model = Data2VecAudioModel(config)
    assert isinstance(model, Data2VecAudioPreTrainedModel)
    outputs = model(torch.zeros(1, 16000))
    ```
    """

    config_class = Data2VecAudioConfig
    base_model_prefix = "data2vec_audio"
    main_input_name = "input_values"

    def _frame_mask(self, attention_mask: torch.Tensor, frames: int, add_adapter: bool = False) -> torch.Tensor:
        """Sample-level mask -> (B, frames) bool keep-mask from the length formula (rows count
        their kept samples, as HF does)."""
        lengths = A.feature_lengths(self.config, attention_mask.long().sum(-1), add_adapter=add_adapter)
        return torch.arange(frames, device=attention_mask.device)[None, :] < lengths[:, None]


class Data2VecAudioModel(Data2VecAudioPreTrainedModel):
    """The bare encoder: ``last_hidden_state`` (after the adapter, if any) and ``extract_features``."""

    architecture = "Data2VecAudioModel"

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__(config)
        self.feature_extractor = Data2VecAudioFeatureEncoder(config)
        self.feature_projection = Data2VecAudioFeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.zeros(config.hidden_size))
        else:
            self.masked_spec_embed = None
        self.encoder = Data2VecAudioEncoder(config)
        self.adapter = Data2VecAudioAdapter(config) if config.add_adapter else None
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the conv feature encoder (its weights stay fixed in training)."""
        self.feature_extractor._freeze_parameters()

    def _mask_hidden_states(self, x, mask_time_indices=None, frame_mask=None):
        """SpecAugment: a given ``mask_time_indices`` always applies (as in HF); random time and
        feature masks only in training."""
        if not A.spec_augment_enabled(self.config):
            return x
        batch, frames, _ = x.shape
        if mask_time_indices is not None:
            has_embed = self.masked_spec_embed is not None
            A.check_mask_time_indices(tuple(mask_time_indices.shape), (batch, frames), has_embed)
            x = torch.where(mask_time_indices.bool()[..., None], self.masked_spec_embed.to(x.dtype), x)
        elif self.config.mask_time_prob > 0 and self.training:
            rng = np.random.default_rng(torch_seed())
            lengths = None if frame_mask is None else _numpy(frame_mask.sum(-1))
            mask = torch.from_numpy(A.random_time_mask(self.config, batch, frames, lengths, rng)).to(x.device)
            x = torch.where(mask[..., None], self.masked_spec_embed.to(x.dtype), x)
        if self.config.mask_feature_prob > 0 and self.training:
            rng = np.random.default_rng(torch_seed())
            mask = torch.from_numpy(A.random_feature_mask(self.config, batch, rng)).to(x.device)
            x = x.masked_fill(mask[:, None, :], 0.0)
        return x

    @document_inputs("Data2VecAudioModel")
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                output_ffn_states: bool = False):
        """``output_ffn_states`` (d2v only, for data2vec pretraining): the returned object also
        carries ``ffn_states``, each layer's feed-forward output before its residual."""
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        self._check_value_input("input_values", input_values)
        A.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        features = self.feature_extractor(input_values).transpose(1, 2)
        frame_mask = None
        if attention_mask is not None:
            if is_tracing():  # per-row lengths are data: only the shape can be checked
                A.check_attention_mask_shape(tuple(attention_mask.shape), tuple(input_values.shape))
            else:
                A.check_attention_mask(self.config, _numpy(attention_mask), tuple(input_values.shape))
            frame_mask = self._frame_mask(attention_mask, features.shape[1])
        x, extract_features = self.feature_projection(features)
        x = self._mask_hidden_states(x, mask_time_indices, frame_mask)
        x, hidden_states, attentions, ffn_states = self.encoder(
            x, frame_mask, output_attentions, output_hidden_states, output_ffn_states
        )
        if self.adapter is not None:
            x = self.adapter(x)
        out = Wav2Vec2BaseModelOutput(x, extract_features, hidden_states, attentions)
        if output_ffn_states:
            out.ffn_states = ffn_states  # an attribute, not an HF output field
        return finish(out, return_dict)


class Data2VecAudioForCTC(Data2VecAudioPreTrainedModel):
    """Encoder (+ adapter) -> dropout -> per-frame vocabulary logits; CTC loss with blank = pad_token_id."""

    architecture = "Data2VecAudioForCTC"

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__(config)
        self.data2vec_audio = build_nested(Data2VecAudioModel, config)
        self.dropout = nn.Dropout(config.final_dropout)
        width = config.output_hidden_size if config.add_adapter else config.hidden_size
        self.lm_head = Linear(width, config.vocab_size)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        self.data2vec_audio.freeze_feature_encoder()

    def freeze_feature_extractor(self) -> None:
        A.warn_freeze_feature_extractor()
        self.freeze_feature_encoder()

    def ctc_input_lengths(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Output frames per row (HF's formula, adapter included)."""
        if attention_mask is None:
            samples = torch.full((input_values.shape[0],), input_values.shape[1], dtype=torch.long)
        else:
            samples = attention_mask.long().sum(-1)
        # an all-padding row has no frames (the formula goes negative there)
        return A.feature_lengths(self.config, samples).to(torch.long).clamp(min=0)

    @document_inputs("Data2VecAudioForCTC")
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, labels: torch.Tensor | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        if labels is not None:
            blank = A.ctc_blank(self.config)
            A.check_ctc_label_range(self.config, _numpy(labels))
        base = self.data2vec_audio(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(self.dropout(base.last_hidden_state))
        loss = None
        if labels is not None:
            input_lengths = self.ctc_input_lengths(input_values, attention_mask).to(logits.device)
            A.check_ctc_frames(self.config, int(input_lengths.max()), logits.shape[1])
            A.check_ctc_labels(self.config, _numpy(labels), _numpy(input_lengths))
            keep = labels >= 0
            log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            with torch.backends.cudnn.flags(enabled=False):
                loss = F.ctc_loss(
                    log_probs,
                    labels.masked_select(keep),
                    input_lengths,
                    keep.sum(-1),
                    blank=blank,
                    reduction=self.config.ctc_loss_reduction,
                    zero_infinity=self.config.ctc_zero_infinity,
                )
        return self._head_output(CausalLMOutput, loss, logits, base, return_dict)


class _Data2VecAudioClassifierBase(Data2VecAudioPreTrainedModel):
    """Shared by the three heads that read the encoder states (no adapter allowed)."""

    def _init_base(self, config: Data2VecAudioConfig) -> None:
        self.data2vec_audio = build_nested(Data2VecAudioModel, config)
        self._init_layer_weights()

    def freeze_feature_encoder(self) -> None:
        self.data2vec_audio.freeze_feature_encoder()

    def freeze_feature_extractor(self) -> None:
        A.warn_freeze_feature_extractor()
        self.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Train only the head."""
        for p in self.data2vec_audio.parameters():
            p.requires_grad = False

    def _encode(self, input_values, attention_mask, output_attentions, output_hidden_states):
        """Run the encoder; returns (features for the head, base output). The weighted layer sum
        needs every hidden state, which are then returned too (as in HF)."""
        weighted = self.layer_weights is not None
        base = self.data2vec_audio(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=True if weighted else output_hidden_states,
            return_dict=True,
        )
        x = weighted_layer_sum(base.hidden_states, self.layer_weights) if weighted else base.last_hidden_state
        return x, base


class Data2VecAudioForSequenceClassification(_Data2VecAudioClassifierBase):
    """Projector -> mean over unpadded frames -> classifier; cross-entropy loss."""

    architecture = "Data2VecAudioForSequenceClassification"

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__(config)
        self._init_base(config)
        self.projector = Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    @document_inputs("Data2VecAudioForSequenceClassification")
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, labels: torch.Tensor | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states)
        x = self.projector(x)
        if attention_mask is None:
            pooled = x.mean(dim=1)
        else:
            keep = self._frame_mask(attention_mask, x.shape[1], add_adapter=self.config.add_adapter)
            # an all-padding row pools to zeros (HF divides 0 by its frame count, or worse)
            count = keep.sum(dim=1).clamp(min=1).view(-1, 1)
            pooled = x.masked_fill(~keep[..., None], 0.0).sum(dim=1) / count
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            A.check_sequence_labels(_numpy(labels), logits.shape[0], self.config.num_labels)
            loss = cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return self._head_output(SequenceClassifierOutput, loss, logits, base, return_dict)


class Data2VecAudioForAudioFrameClassification(_Data2VecAudioClassifierBase):
    """Per-frame classifier. Labels are (batch, frames, num_labels) scores; the loss is the
    cross-entropy against each frame's argmax. Unlike HF, the loss is kept with return_dict=False."""

    architecture = "Data2VecAudioForAudioFrameClassification"

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__(config)
        self._init_base(config)
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.num_labels = config.num_labels
        self.post_init()

    @document_inputs("Data2VecAudioForAudioFrameClassification")
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states)
        logits = self.classifier(x)
        loss = None
        if labels is not None:
            batch, frames, n = logits.shape
            A.check_frame_labels(tuple(labels.shape), batch, frames, n)
            loss = cross_entropy(logits.reshape(-1, n), first_argmax(labels.reshape(-1, n)))
        return self._head_output(TokenClassifierOutput, loss, logits, base, return_dict)


class Data2VecAudioForXVector(_Data2VecAudioClassifierBase):
    """Projector -> TDNN stack -> mean/std pooling -> embedding -> classifier; AM-Softmax loss."""

    architecture = "Data2VecAudioForXVector"

    def __init__(self, config: Data2VecAudioConfig):
        super().__init__(config)
        self._init_base(config)
        self.projector = Linear(config.hidden_size, config.tdnn_dim[0])
        self.tdnn = nn.ModuleList([TDNNLayer(config, i) for i in range(len(config.tdnn_dim))])
        self.feature_extractor = Linear(config.tdnn_dim[-1] * 2, config.xvector_output_dim)
        self.classifier = Linear(config.xvector_output_dim, config.xvector_output_dim)
        self.objective = AMSoftmaxLoss(config.xvector_output_dim, config.num_labels)
        self.post_init()

    @document_inputs("Data2VecAudioForXVector")
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, labels: torch.Tensor | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        self._check_value_input("input_values", input_values)
        frames = A.check_input_values(self.config, tuple(input_values.shape), str(input_values.dtype))
        samples = None if attention_mask is None or is_tracing() else _numpy(attention_mask.long().sum(-1))
        row_frames = None if samples is None else A.feature_lengths(self.config, samples)
        A.check_xvector_frames(self.config, frames, row_frames)
        x, base = self._encode(input_values, attention_mask, output_attentions, output_hidden_states)
        x = self.projector(x)
        for layer in self.tdnn:
            x = layer(x)
        full = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        if attention_mask is None:
            lengths = full
        else:
            # HF's TDNN length formula ignores dilation; slicing past the end keeps every frame.
            lengths = A.tdnn_lengths(self.config, A.feature_lengths(self.config, attention_mask.long().sum(-1)))
            lengths = torch.minimum(lengths.to(x.device), full).clamp(min=0)
        embeddings = self.feature_extractor(statistics_pooling(x, lengths))
        logits = self.classifier(embeddings)
        loss = None
        if labels is not None:
            A.check_xvector_labels(_numpy(labels), logits.shape[0], self.config.num_labels)
            loss = self.objective(logits, labels)
        out = XVectorOutput(loss, logits, embeddings, base.hidden_states, base.attentions)
        return finish(out, return_dict)


__all__ = [
    "Data2VecAudioForAudioFrameClassification", "Data2VecAudioForCTC", "Data2VecAudioForSequenceClassification",
    "Data2VecAudioForXVector", "Data2VecAudioModel", "Data2VecAudioPreTrainedModel",
]
