"""Data2Vec text (RoBERTa-shaped) in PyTorch: small blocks first, the seven models last.

Module names equal HF's state-dict keys (checked against ``d2v_common.spec.text`` at build
time). The Keras twin is ``d2v_tf/text.py``, kept section for section.

``past_key_values`` come back in HF's legacy form: one tuple per layer holding
``(self_key, self_value[, cross_key, cross_value])``, each (batch, heads, length, head_dim).
The same form goes in, as do HF cache objects (anything with ``to_legacy_cache()``).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from d2v_common.models import text as common
from d2v_common.configs import Data2VecTextConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.input_types import check_input_type
from d2v_common.models.losses import check_classification_labels
from d2v_common.models.outputs import (
    EncoderRecord,
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    finish,
)
from d2v_common.loader.pretrained import build_nested
from d2v_common.spec import weight_spec
from d2v_torch.base import Data2VecPreTrainedModel, torch_seed, weighted_layer_sum
from d2v_torch.layers import DenseActivation, DenseDropout
from d2v_torch.layers import (
    Activation, Linear, attention, checkpointed, classification_loss, cross_entropy, expand_head_mask, split_heads,
    tensor_info,
)

# ------------------------------------------------------------------------- inputs, masks


def _shape(t):
    return None if t is None else tuple(t.shape)


def _info(t, name: str = "input_ids"):
    """What the shared checks need of an id tensor (which must be an integer torch tensor)."""
    if t is None:
        return None
    check_input_type(name, t, framework="torch", tensor_types=torch.Tensor, integer=True)
    return tensor_info(t)


def position_ids_from_input_ids(input_ids: torch.Tensor, config: Data2VecTextConfig, past_length: int = 0):
    """Non-pad tokens count up from pad+1 (after the cached positions); pad tokens keep the pad id."""
    pad = config.pad_token_id
    offset = common.position_offset(config)
    keep = torch.ones_like(input_ids, dtype=torch.int32) if pad is None else input_ids.ne(pad).int()
    return ((torch.cumsum(keep, dim=1).int() + past_length) * keep).long() + offset


def legacy_past(past_key_values) -> list[tuple[torch.Tensor, ...]] | None:
    """None, HF's legacy tuples or an HF cache object -> per-layer tuples (None when empty).

    Cache objects are read through their ``to_legacy_cache()`` (no transformers import); empty
    cross-attention slots are dropped.
    """
    if past_key_values is None:
        return None
    if hasattr(past_key_values, "to_legacy_cache"):
        past_key_values = past_key_values.to_legacy_cache()
    layers = []
    for entry in past_key_values:
        entry = tuple(entry)
        if len(entry) < 2 or entry[0] is None or entry[0].numel() == 0:
            return None  # an empty cache: nothing computed yet
        if len(entry) >= 4 and entry[2] is not None and entry[2].numel() > 0:
            layers.append(tuple(entry[:4]))
        else:
            layers.append(tuple(entry[:2]))
    return layers or None


def self_attention_bias(config, mask: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Keep-mask (B, keys) or (B, queries, keys) -> additive bias, causal for decoders (2-D masks)."""
    mask = mask.to(dtype)
    if mask.dim() == 3:
        keep = mask[:, None]
    elif config.is_decoder:
        arange = functools.partial(torch.arange, device=mask.device)
        causal = common.causal_keep_mask(query_length, mask.shape[1], arange).to(dtype)
        keep = causal[None, None] * mask[:, None, None, :]
    else:
        keep = mask[:, None, None, :]
    return (1.0 - keep) * torch.finfo(dtype).min


def cross_attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = mask.to(dtype)
    keep = mask[:, None] if mask.dim() == 3 else mask[:, None, None, :]
    return (1.0 - keep) * torch.finfo(dtype).min


# ------------------------------------------------------------------------------ embeddings


class Data2VecTextForTextEmbeddings(nn.Module):
    """Word + token-type (+ absolute position) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        hidden, pad = config.hidden_size, config.pad_token_id
        self.config = config
        # padding_idx: the pad rows get no gradient, as in HF.
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden, padding_idx=pad)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden, padding_idx=pad)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        x = inputs_embeds
        if self.token_type_embeddings.num_embeddings > 0:  # an empty table means no token types
            if token_type_ids is None:
                token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=device)
            x = x + self.token_type_embeddings(token_type_ids)
        if self.absolute:
            if position_ids is None:
                if input_ids is not None:
                    position_ids = position_ids_from_input_ids(input_ids, self.config, past_length)
                else:  # no way to tell padding apart: count from pad+1 (the cache is not counted, as in HF)
                    start = common.position_offset(self.config) + 1
                    position_ids = torch.arange(start, start + length, device=device)[None].expand(batch, -1)
            x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


# ------------------------------------------------------------------------------- attention


class Data2VecTextSelfAttention(nn.Module):
    """Multi-head attention; relative position types add learned distance terms to the scores."""

    def __init__(self, config: Data2VecTextConfig, position_embedding_type: str):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden)
        self.value = Linear(hidden, hidden)
        self.dropout = config.attention_probs_dropout_prob
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = config.max_position_embeddings
        self.distance_embedding = (
            nn.Embedding(2 * config.max_position_embeddings - 1, self.head_dim)
            if position_embedding_type in common.RELATIVE_TYPES
            else None
        )

    def relative_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, H, Lq, Lk) distance terms, already scaled like the dot products."""
        arange = functools.partial(torch.arange, device=q.device)
        index = common.relative_distance_index(q.shape[2], k.shape[2], self.max_position_embeddings, arange)
        table = self.distance_embedding(index).to(q.dtype)  # (Lq, Lk, D)
        scores = torch.einsum("bhld,lrd->bhlr", q, table)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", k, table)
        return scores / self.head_dim**0.5

    def forward(self, x, bias=None, head_mask=None, key_value_states=None, past=None, output_attentions=False):
        """``key_value_states``: encoder states (cross-attention). ``past``: cached (k, v); for
        self-attention the earlier positions, for cross-attention the encoder projections."""
        q = split_heads(self.query(x), self.num_heads)
        if key_value_states is not None and past is not None:
            k, v = past
        else:
            source = x if key_value_states is None else key_value_states
            k = split_heads(self.key(source), self.num_heads)
            v = split_heads(self.value(source), self.num_heads)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self.distance_embedding is not None:
            # Folded into the additive bias, so the fused kernel still applies.
            rel = self.relative_scores(q, k)
            bias = rel if bias is None else bias + rel
        context, weights = attention(q, k, v, bias, head_mask, self.dropout, self.training, output_attentions)
        return context, weights, (k, v)


class Data2VecTextSelfOutput(nn.Module):
    """Projection back to the hidden size -> dropout -> residual -> LayerNorm."""

    def __init__(self, config: Data2VecTextConfig, in_features: int | None = None):
        super().__init__()
        self.dense = Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Data2VecTextAttention(nn.Module):
    """Self- (or cross-) attention -> dense -> dropout -> residual -> LayerNorm: (B, T, D) -> (B, T, D).

    Also returns the attention weights (when asked) and the (k, v) cache.

    Args:
        config: the model's ``Data2VecTextConfig``.
        position_embedding_type: ``"absolute"`` or a relative type (``"relative_key"``,
            ``"relative_key_query"``) that adds learned distance terms.
    """

    def __init__(self, config: Data2VecTextConfig, position_embedding_type: str):
        super().__init__()
        self.self = Data2VecTextSelfAttention(config, position_embedding_type)
        self.output = Data2VecTextSelfOutput(config)

    def forward(self, x, bias=None, head_mask=None, key_value_states=None, past=None, output_attentions=False):
        context, weights, present = self.self(x, bias, head_mask, key_value_states, past, output_attentions)
        return self.output(context, x), weights, present


# ---------------------------------------------------------------------------------- layers


class Data2VecTextIntermediate(DenseActivation):
    """Dense to intermediate_size -> ``hidden_act``: (B, T, D) -> (B, T, intermediate_size).

    Args:
        config: the model's ``Data2VecTextConfig``.
    """

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)


class Data2VecTextOutput(Data2VecTextSelfOutput):
    """Dense back to hidden_size -> dropout -> residual -> LayerNorm: (B, T, intermediate_size) -> (B, T, D).

    Also returns the dense output before dropout and residual (data2vec's teacher targets).

    Args:
        config: the model's ``Data2VecTextConfig``.
    """

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config, config.intermediate_size)

    def forward(self, x, residual):
        """(output, feed-forward output before dropout and residual: data2vec's teacher targets)."""
        ffn = self.dense(x)
        return self.LayerNorm(self.dropout(ffn) + residual), ffn


class Data2VecTextLayer(nn.Module):
    """Post-norm block: self-attention, optional cross-attention (decoders), feed-forward."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        self.attention = Data2VecTextAttention(config, config.position_embedding_type)
        # Cross-attention always uses absolute positions (no distance terms).
        self.crossattention = Data2VecTextAttention(config, "absolute") if config.add_cross_attention else None
        self.intermediate = Data2VecTextIntermediate(config)
        self.output = Data2VecTextOutput(config)

    def forward(self, x, bias=None, head_mask=None, encoder_states=None, encoder_bias=None, past=None,
                output_attentions=False):
        x, weights, present = self.attention(x, bias, head_mask, None, past[:2] if past else None, output_attentions)
        cross_weights = None
        if encoder_states is not None:
            if self.crossattention is None:
                raise common.no_cross_attention_error()
            cross_past = past[2:] if past is not None and len(past) == 4 else None
            x, cross_weights, cross_present = self.crossattention(
                x, encoder_bias, head_mask, encoder_states, cross_past, output_attentions
            )
            present = present + cross_present
        x, ffn = self.output(self.intermediate(x), x)
        return x, weights, cross_weights, present, ffn


class Data2VecTextEncoder(nn.Module):
    """``num_hidden_layers`` post-norm layers: (B, T, D) -> (B, T, D).

    Returns the last state, the per-layer (k, v) caches (with ``use_cache``) and the recorded hidden
    states, attentions, cross-attentions and feed-forward outputs (None unless asked).

    Args:
        config: the model's ``Data2VecTextConfig``.
    """

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        self.layer = nn.ModuleList([Data2VecTextLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, x, bias=None, head_mask=None, encoder_states=None, encoder_bias=None, past=None,
                use_cache=False, output_attentions=False, output_hidden_states=False, output_ffn_states=False):
        head_masks = expand_head_mask(head_mask, len(self.layer), x.dtype)
        checkpointing = self.gradient_checkpointing and self.training
        use_cache = use_cache and not checkpointing  # recomputation and caching do not mix
        record = EncoderRecord(output_hidden_states, output_attentions, output_ffn_states, use_cache)
        for i, layer in enumerate(self.layer):
            record.layer_input(x)
            args = (x, bias, head_masks[i], encoder_states, encoder_bias, past[i] if past else None, output_attentions)
            if checkpointing:
                x, weights, cross_weights, present, ffn = checkpointed(self, layer, *args)
            else:
                x, weights, cross_weights, present, ffn = layer(*args)
            record.layer_output(weights, cross_weights, ffn, present)
        record.finish(x)
        return x, record.presents, record.hidden_states, record.attentions, record.cross_attentions, record.ffn_states


class Data2VecTextPooler(nn.Module):
    """First token -> dense -> tanh."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


# ------------------------------------------------------------------------------------ heads


class Data2VecTextLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (weight tied to the word embeddings) + own bias."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        hidden = config.hidden_size
        self.dense = Linear(hidden, hidden)
        self.act = Activation("gelu")
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder = Linear(hidden, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x):
        return self.decoder(self.layer_norm(self.act(self.dense(x))))


class Data2VecTextClassificationHead(nn.Module):
    """Token 0 -> dropout -> dense -> tanh -> dropout -> out_proj."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.out_proj = Linear(config.hidden_size, config.num_labels)

    def forward(self, x):
        x = torch.tanh(self.dense(self.dropout(x[:, 0])))
        return self.out_proj(self.dropout(x))


def _classifier_dropout(config: Data2VecTextConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token loss: position t predicts label t+1 (the last position predicts nothing)."""
    shifted = F.pad(labels, (0, 1), value=common.IGNORE_INDEX)[..., 1:]
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1))


def question_answering_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Mean of the start and end cross-entropies; positions outside the input are ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.shape[1]
    start = cross_entropy(start_logits, start_positions.clamp(0, ignored), ignore_index=ignored)
    end = cross_entropy(end_logits, end_positions.clamp(0, ignored), ignore_index=ignored)
    return (start + end) / 2


# ---------------------------------------------------------------------------------- models


class Data2VecTextPreTrainedModel(Data2VecPreTrainedModel):
    """Base of the PyTorch text classes: config class, input name, embedding resizing (not built directly).

    Args:
        config: a ``Data2VecTextConfig``; it sizes every layer.

    Examples:
    ```python no-run
    import torch
    from d2v_torch import Data2VecTextConfig, Data2VecTextModel, Data2VecTextPreTrainedModel

    config = Data2VecTextConfig(vocab_size=25, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
    model = Data2VecTextModel(config)
    assert isinstance(model, Data2VecTextPreTrainedModel)
    outputs = model(torch.tensor([[0, 5, 6, 2]]))
    ```
    """

    config_class = Data2VecTextConfig
    base_model_prefix = "data2vec_text"
    main_input_name = "input_ids"

    def _backbone(self) -> "Data2VecTextModel":
        return self if isinstance(self, Data2VecTextModel) else self.data2vec_text

    def _make_spec(self):
        return weight_spec(self.config, self.architecture)

    def get_input_embeddings(self) -> nn.Embedding:
        return self._backbone().embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        old = self.get_input_embeddings()
        if not isinstance(value, nn.Embedding) or tuple(value.weight.shape) != tuple(old.weight.shape):
            raise common.embedding_mismatch_error("an nn.Embedding", tuple(old.weight.shape))
        self._backbone().embeddings.word_embeddings = value
        self.tie_weights()

    def get_output_embeddings(self):
        return None

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None):
        """Change the vocabulary size: old rows are kept, new rows initialised like a fresh model,
        the LM decoder re-tied; ``config.vocab_size`` follows. Returns the new embedding."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = common.resized_vocab_size(old.num_embeddings, new_num_tokens, pad_to_multiple_of)
        new_config = self.config.copy(vocab_size=n)  # validates (pad id inside the vocabulary ...)
        old_spec = self.spec
        state = self.state_arrays()
        arrays = {p.name: state[p.name] for p in old_spec.stored()}
        self.config.vocab_size = new_config.vocab_size
        new_spec = self._make_spec()
        changed = [p.name for p in new_spec.stored() if p.shape != old_spec[p.name].shape]
        fresh = new_spec.init_arrays(torch_seed(), names=changed)
        for name in changed:
            keep = min(arrays[name].shape[0], n)
            fresh[name][:keep] = arrays[name][:keep]
            arrays[name] = fresh[name]
        weight = old.weight
        emb = nn.Embedding(n, old.embedding_dim, padding_idx=old.padding_idx, device=weight.device, dtype=weight.dtype)
        self._backbone().embeddings.word_embeddings = emb
        self._resize_output(n, weight.device, weight.dtype)
        for module in self.modules():
            if isinstance(module, Data2VecTextPreTrainedModel):
                module.spec = module._make_spec()
        self.load_arrays(arrays)
        return self.get_input_embeddings()

    def _resize_output(self, n: int, device, dtype) -> None:
        """Heads with vocabulary-sized tensors rebuild them here."""


class Data2VecTextModel(Data2VecTextPreTrainedModel):
    """The bare encoder (or decoder, with ``config.is_decoder``): hidden states, pooled first token."""

    architecture = "Data2VecTextModel"

    def __init__(self, config: Data2VecTextConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.add_pooling_layer = add_pooling_layer
        self.spec = self._make_spec()
        self.embeddings = Data2VecTextForTextEmbeddings(config)
        self.encoder = Data2VecTextEncoder(config)
        self.pooler = Data2VecTextPooler(config) if add_pooling_layer else None
        self.post_init()

    def _make_spec(self):
        return weight_spec(self.config, self.architecture, add_pooling_layer=self.add_pooling_layer)

    @document_inputs("Data2VecTextModel")
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                past_key_values=None, use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                cache_position: torch.Tensor | None = None, output_ffn_states: bool = False):
        """``output_ffn_states`` (d2v only, for data2vec pretraining): the returned object also
        carries ``ffn_states``, each layer's feed-forward output before its residual.
        ``cache_position`` is accepted for HF compatibility; the cache tracks itself."""
        config = self.config
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        use_cache = (config.use_cache if use_cache is None else use_cache) and config.is_decoder

        past = legacy_past(past_key_values)
        batch, length, past_length = common.check_model_inputs(
            config, _info(input_ids), _shape(inputs_embeds), _info(token_type_ids, "token_type_ids"),
            _info(position_ids, "position_ids"),
            None if past is None else [[tuple(t.shape) for t in layer] for layer in past],
        )
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        bias = self._self_attention_bias(attention_mask, batch, length, past_length, device)
        if not config.is_decoder:
            encoder_hidden_states = None  # encoders have no cross-attention (HF ignores them too)
        encoder_bias = self._cross_attention_bias(encoder_hidden_states, encoder_attention_mask, past, batch, length,
                                                  device)

        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, past_length)
        x, presents, hidden_states, attentions, cross_attentions, ffn_states = self.encoder(
            x, bias, head_mask, encoder_hidden_states, encoder_bias, past, use_cache, output_attentions,
            output_hidden_states, output_ffn_states,
        )
        pooled = self.pooler(x) if self.pooler is not None else None
        if not return_dict:  # HF keeps the pooled slot even when there is no pooler
            rest = (presents, hidden_states, attentions, cross_attentions)
            return (x, pooled) + tuple(v for v in rest if v is not None)
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            x, pooled, hidden_states, presents, attentions, cross_attentions
        )
        if output_ffn_states:
            out.ffn_states = ffn_states  # an attribute, not an HF output field
        return out

    def _self_attention_bias(self, attention_mask, batch: int, length: int, past_length: int, device):
        """The additive bias of the self-attention (padding, and causal for decoders)."""
        key_length = past_length + length
        if attention_mask is None:
            attention_mask = torch.ones((batch, key_length), device=device)
        common.check_attention_mask_shape(_shape(attention_mask), batch, length, key_length)
        return self_attention_bias(self.config, attention_mask, length, self.embeddings.word_embeddings.weight.dtype)

    def _cross_attention_bias(self, encoder_hidden_states, encoder_attention_mask, past, batch: int, length: int,
                              device):
        """The additive bias over the encoder's states (None without cross-attention)."""
        if encoder_hidden_states is None:
            return None
        common.check_encoder_hidden_states(self.config, tuple(encoder_hidden_states.shape))
        source_length = encoder_hidden_states.shape[1]
        if past is not None and len(past[0]) == 4:
            source_length = past[0][2].shape[2]  # cached encoder projections are what is attended
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones((batch, source_length), device=device)
        common.check_attention_mask_shape(
            _shape(encoder_attention_mask), batch, length, source_length, "encoder_attention_mask"
        )
        return cross_attention_bias(encoder_attention_mask, self.embeddings.word_embeddings.weight.dtype)

    def forward_features(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None, *,
                         encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                         use_cache=False) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """The encoder call every head makes (the backbone half of a task model).

        Args:
            input_ids ... output_hidden_states: as in ``forward``.
            encoder_hidden_states, encoder_attention_mask, past_key_values: decoder inputs
                (the causal LM head only).
            use_cache: return the key/value cache (off for every head but the causal LM).

        Returns:
            The model output as an object (``return_dict=True``).
        """
        return self(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
            head_mask=head_mask, inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )


class _LMHeadModel(Data2VecTextPreTrainedModel):
    """What the two language-model heads share: the encoder and LM head, the tied decoder and
    vocabulary resizing."""

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.data2vec_text = build_nested(Data2VecTextModel, config, add_pooling_layer=False)
        self.lm_head = Data2VecTextLMHead(config)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.decoder.weight = self.data2vec_text.embeddings.word_embeddings.weight
        self.lm_head.decoder.bias = self.lm_head.bias

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def _resize_output(self, n: int, device, dtype) -> None:
        head = self.lm_head
        head.decoder = Linear(head.decoder.in_features, n, device=device, dtype=dtype)
        head.bias = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.tie_weights()

    def _lm_loss(self, logits, labels):
        """Checks the labels (one vocabulary id per position), then the head's own loss."""
        common.check_same_shape("labels", _shape(labels), logits.shape[:2])
        common.check_label_ids("labels", tensor_info(labels), self.config.vocab_size)
        return self._token_loss(logits, labels)

    def _lm_outputs(self, input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
                    encoder_hidden_states, encoder_attention_mask, past_key_values, use_cache, output_attentions,
                    output_hidden_states):
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, output_hidden_states, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
        )
        return base, self.lm_head(base.last_hidden_state)


class Data2VecTextForCausalLM(_LMHeadModel):
    """Decoder + LM head; labels are the input ids (shifted inside the loss)."""

    architecture = "Data2VecTextForCausalLM"

    def __init__(self, config: Data2VecTextConfig):
        if not config.is_decoder:
            warnings.warn("Data2VecTextForCausalLM attends both ways unless config.is_decoder=True", stacklevel=2)
        super().__init__(config)
        self.post_init()

    @staticmethod
    def _token_loss(logits, labels):
        return causal_lm_loss(logits, labels)

    @document_inputs("Data2VecTextForCausalLM")
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        if labels is not None:
            use_cache = False
        base, logits = self._lm_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds, encoder_hidden_states,
            encoder_attention_mask, past_key_values, use_cache, output_attentions, output_hidden_states,
        )
        loss = None if labels is None else self._lm_loss(logits, labels)
        out = CausalLMOutputWithCrossAttentions(
            loss, logits, base.past_key_values, base.hidden_states, base.attentions, base.cross_attentions
        )
        return finish(out, return_dict)


class Data2VecTextForMaskedLM(_LMHeadModel):
    """Bidirectional encoder + LM head; labels -100 mark unmasked positions."""

    architecture = "Data2VecTextForMaskedLM"

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.post_init()

    @staticmethod
    def _token_loss(logits, labels):
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    @document_inputs("Data2VecTextForMaskedLM")
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base, logits = self._lm_outputs(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds, encoder_hidden_states,
            encoder_attention_mask, None, False, output_attentions, output_hidden_states,
        )
        loss = None if labels is None else self._lm_loss(logits, labels)
        return self._head_output(MaskedLMOutput, loss, logits, base, return_dict)


class _PerPositionHeadModel(Data2VecTextPreTrainedModel):
    """Heads on the encoder's last hidden state (no pooler): sequence and token classification
    share this forward (-> ``_classify`` -> ``_head_loss``; subclasses set ``output_class`` and the
    two methods); question answering keeps its own."""

    output_class: type = SequenceClassifierOutput

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.data2vec_text = build_nested(Data2VecTextModel, config, add_pooling_layer=False)
        self._init_layer_weights()  # sequence classification with use_weighted_layer_sum only

    def _classify(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @document_inputs("Data2VecTextForSequenceClassification", "Data2VecTextForTokenClassification")
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        weighted = self.layer_weights is not None  # the weighted sum needs (and returns) every hidden state
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, True if weighted else output_hidden_states,
        )
        x = weighted_layer_sum(base.hidden_states, self.layer_weights) if weighted else base.last_hidden_state
        logits = self._classify(x)
        loss = self._head_loss(logits, labels) if labels is not None else None
        return finish(self.output_class(loss, logits, base.hidden_states, base.attentions), return_dict)


class Data2VecTextForSequenceClassification(_PerPositionHeadModel):
    """Classification / regression from the first token (``problem_type`` picks the loss)."""

    architecture = "Data2VecTextForSequenceClassification"

    output_class = SequenceClassifierOutput

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.classifier = Data2VecTextClassificationHead(config)
        self.post_init()

    def _classify(self, hidden_states):
        return self.classifier(hidden_states)

    def _head_loss(self, logits, labels):
        check_classification_labels(self.config, _shape(labels), str(labels.dtype), logits.shape[0])
        if not labels.dtype.is_floating_point and self.config.num_labels > 1:
            common.check_label_ids("labels", tensor_info(labels), self.config.num_labels)
        return classification_loss(logits, labels, self.config)


class Data2VecTextForMultipleChoice(Data2VecTextPreTrainedModel):
    """Each (question, choice) pair is encoded on its own; the pooled output scores it."""

    architecture = "Data2VecTextForMultipleChoice"

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.data2vec_text = build_nested(Data2VecTextModel, config, add_pooling_layer=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, 1)
        self.post_init()

    @document_inputs("Data2VecTextForMultipleChoice")
    def forward(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
                head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        batch, choices, length = common.multiple_choice_shapes(_shape(input_ids), _shape(inputs_embeds))

        def flat(t, name):
            if t is None:
                return None
            common.check_same_shape(name, _shape(t)[:3], (batch, choices, length))
            return t.reshape(batch * choices, *t.shape[2:])

        base = self.data2vec_text.forward_features(
            flat(input_ids, "input_ids"),
            flat(attention_mask, "attention_mask"),
            flat(token_type_ids, "token_type_ids"),
            flat(position_ids, "position_ids"),
            head_mask,
            flat(inputs_embeds, "inputs_embeds"),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(base.pooler_output)).reshape(batch, choices)
        loss = None
        if labels is not None:
            common.check_same_shape("labels", _shape(labels), (batch,))
            common.check_label_ids("labels", tensor_info(labels), choices)
            loss = cross_entropy(logits, labels)
        return self._head_output(MultipleChoiceModelOutput, loss, logits, base, return_dict)


class Data2VecTextForTokenClassification(_PerPositionHeadModel):
    """A label per token (-100: not scored)."""

    architecture = "Data2VecTextForTokenClassification"

    output_class = TokenClassifierOutput

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _classify(self, hidden_states):
        return self.classifier(self.dropout(hidden_states))

    def _head_loss(self, logits, labels):
        common.check_same_shape("labels", _shape(labels), logits.shape[:2])
        common.check_label_ids("labels", tensor_info(labels), self.config.num_labels)
        return cross_entropy(logits.reshape(-1, self.config.num_labels), labels.reshape(-1))


class Data2VecTextForQuestionAnswering(_PerPositionHeadModel):
    """Start and end logits per token for extractive question answering."""

    architecture = "Data2VecTextForQuestionAnswering"

    def __init__(self, config: Data2VecTextConfig):
        super().__init__(config)
        self.qa_outputs = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @document_inputs("Data2VecTextForQuestionAnswering")
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        common.check_question_answering(self.config)
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, output_hidden_states,
        )
        logits = self.qa_outputs(base.last_hidden_state)
        start_logits, end_logits = logits[..., 0].contiguous(), logits[..., 1].contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            for name, t in (("start_positions", start_positions), ("end_positions", end_positions)):
                common.check_positions(name, _shape(t), str(t.dtype), logits.shape[0])
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        out = QuestionAnsweringModelOutput(loss, start_logits, end_logits, base.hidden_states, base.attentions)
        return finish(out, return_dict)


__all__ = [
    "Data2VecTextForCausalLM", "Data2VecTextForMaskedLM", "Data2VecTextForMultipleChoice",
    "Data2VecTextForQuestionAnswering", "Data2VecTextForSequenceClassification", "Data2VecTextForTokenClassification",
    "Data2VecTextModel", "Data2VecTextPreTrainedModel",
]
