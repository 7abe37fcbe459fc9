"""Data2Vec text (RoBERTa-shaped) in Keras 3: small blocks first, the seven models last.

Twin of ``d2v_torch/text.py``, section for section. ``past_key_values`` use HF's legacy form:
one tuple per layer of ``(self_key, self_value[, cross_key, cross_value])`` tensors shaped
(batch, heads, length, head_dim). Masks and position tables are built with Keras ops (not numpy)
so that graphs with an unknown sequence length (``tf.data`` padded batches) still trace.

Keras training: ``fit(x={"input_ids": ..., "attention_mask": ...}, y=labels)`` uses each head's
built-in loss. Question answering takes ``y={"start_positions": ..., "end_positions": ...}``
(or puts both keys in ``x``, where the loss is computed in the call).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from d2v_common.spec import layouts
from d2v_common.models import text as common
from d2v_common.configs import Data2VecTextConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.input_types import check_input_dtype
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
from d2v_tf import backend
from d2v_tf.base import TFData2VecPreTrainedModel, count_not_equal, name_sublayers, unpack_inputs, weighted_layer_sum
from d2v_tf.checkpointing import CheckpointingEncoder
from d2v_tf.layers import DenseActivation, DenseDropout
from d2v_tf.layers import (
    is_eager, tensor_info, Activation, Dropout, Embedding, Layer, LayerNorm, Linear, attention, classification_loss,
    cross_entropy, expand_head_mask, spec_attribute, split_heads,
)

_MIN = float(np.finfo(np.float32).min)

# ------------------------------------------------------------------------- inputs, masks


def _tensor(x, dtype=None):
    if x is None:
        return None
    x = ops.convert_to_tensor(x)
    return ops.cast(x, dtype) if dtype is not None else x


def _shape(t):
    return None if t is None else tuple(None if d is None else int(d) for d in t.shape)


def _info(t, name: str = "input_ids"):
    """What the shared checks need of an id tensor (which must have an integer dtype)."""
    if t is None:
        return None
    check_input_dtype(name, t.dtype, framework="tf", integer=True)
    return tensor_info(t)



def position_ids_from_input_ids(input_ids, config: Data2VecTextConfig, past_length=0):
    """Non-pad tokens count up from pad+1 (after the cached positions); pad tokens keep the pad id."""
    pad = config.pad_token_id
    keep = ops.ones_like(input_ids, "int32") if pad is None else ops.cast(ops.not_equal(input_ids, pad), "int32")
    return (ops.cumsum(keep, axis=1) + past_length) * keep + common.position_offset(config)


def legacy_past(past_key_values):
    """None or HF legacy tuples (tensors or arrays) -> per-layer tuples of tensors (None when empty)."""
    if past_key_values is None:
        return None
    layers = []
    for entry in past_key_values:
        entry = tuple(entry)
        if len(entry) < 2 or entry[0] is None or int(np.prod(entry[0].shape)) == 0:
            return None
        keep = 4 if len(entry) >= 4 and entry[2] is not None and int(np.prod(entry[2].shape)) > 0 else 2
        layers.append(tuple(_tensor(t, "float32") for t in entry[:keep]))
    return layers or None


def _causal_keep(query_length, key_length):
    """(queries, keys): query i (at position past + i) sees keys 0 .. past + i."""
    past = key_length - query_length
    return ops.cast(ops.arange(key_length)[None, :] <= ops.arange(query_length)[:, None] + past, "float32")


def _per_head_keys(mask):
    """(B, keys) -> (B, 1, 1, keys); a reshape, as LiteRT has no strided slice adding two axes."""
    return ops.expand_dims(ops.expand_dims(mask, 1), 1)


def self_attention_bias(config, mask, query_length):
    """Keep-mask (B, keys) or (B, queries, keys) -> additive bias, causal for decoders (2-D masks)."""
    mask = ops.cast(mask, "float32")
    if len(mask.shape) == 3:
        keep = mask[:, None]
    elif config.is_decoder:
        keep = _causal_keep(query_length, ops.shape(mask)[1])[None, None] * _per_head_keys(mask)
    else:
        keep = _per_head_keys(mask)
    return (1.0 - keep) * _MIN


def cross_attention_bias(mask):
    mask = ops.cast(mask, "float32")
    keep = mask[:, None] if len(mask.shape) == 3 else _per_head_keys(mask)
    return (1.0 - keep) * _MIN


def _lookup(table: Embedding, ids, padding_idx):
    """Embedding lookup where the pad row gets no gradient (PyTorch's ``padding_idx``)."""
    out = table(ids)
    if padding_idx is None:
        return out
    is_pad = ops.expand_dims(ops.equal(ops.cast(ids, "int32"), padding_idx), -1)
    return ops.where(is_pad, ops.stop_gradient(out), out)


# ------------------------------------------------------------------------------ embeddings


class TFData2VecTextForTextEmbeddings(Layer):
    """Word + token-type (+ absolute position) embeddings, then LayerNorm and dropout: (B, T) ids -> (B, T, D).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.config = config
        self.word_embeddings = Embedding(config.vocab_size, hidden)
        self.position_embeddings = Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.absolute = config.position_embedding_type == "absolute"

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, past_length=0,
             training=False):
        pad = self.config.pad_token_id
        if inputs_embeds is None:
            inputs_embeds = _lookup(self.word_embeddings, input_ids, pad)
        x = inputs_embeds
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        if self.token_type_embeddings.num_embeddings > 0:  # an empty table means no token types
            if token_type_ids is None:
                token_type_ids = ops.zeros((batch, length), "int32")
            x = x + self.token_type_embeddings(token_type_ids)
        if self.absolute:
            if position_ids is None:
                if input_ids is not None:
                    position_ids = position_ids_from_input_ids(input_ids, self.config, past_length)
                else:  # no way to tell padding apart: count from pad+1 (the cache is not counted, as in HF)
                    start = common.position_offset(self.config) + 1
                    position_ids = ops.arange(start, start + length)[None, :]
            x = x + _lookup(self.position_embeddings, position_ids, pad)
        return self.dropout(self.LayerNorm(x), training=training)


# ------------------------------------------------------------------------------- attention


class TFData2VecTextSelfAttention(Layer):
    """Multi-head attention; relative position types add learned distance terms to the scores.

    (B, T, D) -> (B, T, D) context, plus the weights (when asked) and the (k, v) cache.

    Args:
        config: the model's ``Data2VecTextConfig``.
        position_embedding_type: ``"absolute"`` or a relative type (``"relative_key"``,
            ``"relative_key_query"``) that adds learned distance terms.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, position_embedding_type: str, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden)
        self.value = Linear(hidden, hidden)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.position_embedding_type = position_embedding_type
        self.max_position_embeddings = config.max_position_embeddings
        self.distance_embedding = (
            Embedding(2 * config.max_position_embeddings - 1, self.head_dim)
            if position_embedding_type in common.RELATIVE_TYPES
            else None
        )

    def relative_scores(self, q, k):
        """(B, H, Lq, Lk) distance terms, already scaled like the dot products."""
        q_len, k_len = ops.shape(q)[2], ops.shape(k)[2]
        # Same table as d2v_common.models.text.relative_distance_index, in ops for unknown lengths.
        index = ops.arange(k_len - q_len, k_len)[:, None] - ops.arange(k_len)[None, :]
        index = index + (self.max_position_embeddings - 1)
        table = ops.cast(self.distance_embedding(index), q.dtype)  # (Lq, Lk, D)
        scores = ops.einsum("bhld,lrd->bhlr", q, table)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + ops.einsum("bhrd,lrd->bhlr", k, table)
        return scores / self.head_dim**0.5

    def call(self, x, bias=None, head_mask=None, key_value_states=None, past=None, output_attentions=False,
             training=False):
        q = split_heads(self.query(x), self.num_heads)
        if key_value_states is not None and past is not None:
            k, v = past
        else:
            source = x if key_value_states is None else key_value_states
            k = split_heads(self.key(source), self.num_heads)
            v = split_heads(self.value(source), self.num_heads)
            if past is not None:
                k, v = ops.concatenate([past[0], k], axis=2), ops.concatenate([past[1], v], axis=2)
        if self.distance_embedding is not None:
            rel = self.relative_scores(q, k)
            bias = rel if bias is None else bias + rel
        context, weights = attention(q, k, v, bias, head_mask, self.dropout, training, output_attentions)
        return context, weights, (k, v)


class TFData2VecTextSelfOutput(Layer):
    """Projection back to the hidden size -> dropout -> residual -> LayerNorm."""

    def __init__(self, config: Data2VecTextConfig, in_features: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(in_features or config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def call(self, x, residual=None, training=False):
        return self.LayerNorm(self.dropout(self.dense(x), training=training) + residual)


class TFData2VecTextAttention(Layer):
    """Self- (or cross-) attention -> dense -> dropout -> residual -> LayerNorm: (B, T, D) -> (B, T, D).

    Also returns the attention weights (when asked) and the (k, v) cache.

    Args:
        config: the model's ``Data2VecTextConfig``.
        position_embedding_type: ``"absolute"`` or a relative type (``"relative_key"``,
            ``"relative_key_query"``) that adds learned distance terms.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, position_embedding_type: str, **kwargs):
        super().__init__(**kwargs)
        self.self = TFData2VecTextSelfAttention(config, position_embedding_type)
        self.output_ = TFData2VecTextSelfOutput(config)  # "output" is a Keras property

    def call(self, x, bias=None, head_mask=None, key_value_states=None, past=None, output_attentions=False,
             training=False):
        context, weights, present = self.self(
            x, bias=bias, head_mask=head_mask, key_value_states=key_value_states, past=past,
            output_attentions=output_attentions, training=training,
        )
        return self.output_(context, residual=x, training=training), weights, present


# ---------------------------------------------------------------------------------- layers


class TFData2VecTextIntermediate(DenseActivation):
    """Dense to intermediate_size -> ``hidden_act``: (B, T, D) -> (B, T, intermediate_size).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act, **kwargs)


class TFData2VecTextOutput(TFData2VecTextSelfOutput):
    """Dense back to hidden_size -> dropout -> residual -> LayerNorm: (B, T, intermediate_size) -> (B, T, D).

    Also returns the dense output before dropout and residual (data2vec's teacher targets).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, config.intermediate_size, **kwargs)

    def call(self, x, residual=None, training=False):
        """(output, feed-forward output before dropout and residual: data2vec's teacher targets)."""
        ffn = self.dense(x)
        return self.LayerNorm(self.dropout(ffn, training=training) + residual), ffn


class TFData2VecTextLayer(Layer):
    """Post-norm block: self-attention, optional cross-attention (decoders), feed-forward:
    (B, T, D) -> (B, T, D).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        self.attention = TFData2VecTextAttention(config, config.position_embedding_type)
        # Cross-attention always uses absolute positions (no distance terms).
        self.crossattention = TFData2VecTextAttention(config, "absolute") if config.add_cross_attention else None
        self.intermediate = TFData2VecTextIntermediate(config)
        self.output_ = TFData2VecTextOutput(config)

    def call(self, x, bias=None, head_mask=None, encoder_states=None, encoder_bias=None, past=None,
             output_attentions=False, training=False):
        x, weights, present = self.attention(
            x, bias=bias, head_mask=head_mask, past=past[:2] if past else None,
            output_attentions=output_attentions, training=training,
        )
        cross_weights = None
        if encoder_states is not None:
            if self.crossattention is None:
                raise common.no_cross_attention_error()
            cross_past = past[2:] if past is not None and len(past) == 4 else None
            x, cross_weights, cross_present = self.crossattention(
                x, bias=encoder_bias, head_mask=head_mask, key_value_states=encoder_states, past=cross_past,
                output_attentions=output_attentions, training=training,
            )
            present = present + cross_present
        x, ffn = self.output_(self.intermediate(x), residual=x, training=training)
        return x, weights, cross_weights, present, ffn


class TFData2VecTextEncoder(CheckpointingEncoder, Layer):
    """``num_hidden_layers`` post-norm layers: (B, T, D) -> (B, T, D).

    Returns the last state, the per-layer (k, v) caches (with ``use_cache``) and the recorded hidden
    states, attentions, cross-attentions and feed-forward outputs (None unless asked).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        self.layer = [TFData2VecTextLayer(config) for _ in range(config.num_hidden_layers)]
        self.init_checkpointing()

    def call(self, x, bias=None, head_mask=None, encoder_states=None, encoder_bias=None, past=None, use_cache=False,
             output_attentions=False, output_hidden_states=False, output_ffn_states=False, training=False):
        head_masks = expand_head_mask(head_mask, len(self.layer))
        record = EncoderRecord(output_hidden_states, output_attentions, output_ffn_states, use_cache)
        for i, layer in enumerate(self.layer):
            record.layer_input(x)
            x, weights, cross_weights, present, ffn = self.call_layer(
                layer, x, dict(bias=bias, head_mask=head_masks[i], encoder_states=encoder_states,
                            encoder_bias=encoder_bias), training,
                past=past[i] if past else None, output_attentions=output_attentions,
            )
            record.layer_output(weights, cross_weights, ffn, present)
        record.finish(x)
        return x, record.presents, record.hidden_states, record.attentions, record.cross_attentions, record.ffn_states


class TFData2VecTextPooler(Layer):
    """First token -> dense -> tanh: (B, T, D) -> (B, D).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def call(self, x):
        return ops.tanh(self.dense(x[:, 0]))


# ------------------------------------------------------------------------------------ heads


class TFData2VecTextLMHead(Layer):
    """dense -> GELU -> LayerNorm -> decoder + own bias. A tied decoder has no variable of its
    own: the model passes the word-embedding matrix in."""

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.dense = Linear(hidden, hidden)
        self.act = Activation("gelu")
        self.layer_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder = None if config.tie_word_embeddings else Linear(hidden, config.vocab_size, bias=False)
        self.bias = self.add_weight(shape=(config.vocab_size,), initializer="zeros", name="bias")

    def call(self, x, tied_weight=None):
        h = self.layer_norm(self.act(self.dense(x)))
        if self.decoder is None:
            logits = ops.matmul(h, ops.transpose(ops.cast(tied_weight, h.dtype)))
        else:
            logits = self.decoder(h)
        return logits + ops.cast(self.bias, logits.dtype)


class TFData2VecTextClassificationHead(Layer):
    """Token 0 -> dropout -> dense -> tanh -> dropout -> out_proj: (B, T, D) -> (B, num_labels).

    Args:
        config: the model's ``Data2VecTextConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(_classifier_dropout(config))
        self.out_proj = Linear(config.hidden_size, config.num_labels)

    def call(self, x, training=False):
        x = ops.tanh(self.dense(self.dropout(x[:, 0], training=training)))
        return self.out_proj(self.dropout(x, training=training))


def _classifier_dropout(config: Data2VecTextConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def causal_lm_loss(logits, labels):
    """Next-token loss: position t predicts label t+1 (the last position predicts nothing)."""
    labels = ops.cast(labels, "int32")
    tail = ops.full_like(labels[:, :1], common.IGNORE_INDEX)
    shifted = ops.concatenate([labels[:, 1:], tail], axis=1)
    return cross_entropy(ops.reshape(logits, (-1, logits.shape[-1])), ops.reshape(shifted, (-1,)))


def question_answering_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of the start and end cross-entropies; positions outside the input are ignored."""
    for name, t in (("start_positions", start_positions), ("end_positions", end_positions)):
        t = _tensor(t)
        common.check_positions(name, _shape(t), str(t.dtype), start_logits.shape[0])
    start_positions, end_positions = _tensor(start_positions, "int32"), _tensor(end_positions, "int32")
    if len(start_positions.shape) > 1:
        start_positions = ops.squeeze(start_positions, -1)
    if len(end_positions.shape) > 1:
        end_positions = ops.squeeze(end_positions, -1)
    ignored = ops.shape(start_logits)[1]
    start = cross_entropy(start_logits, ops.clip(start_positions, 0, ignored), ignore_index=ignored)
    end = cross_entropy(end_logits, ops.clip(end_positions, 0, ignored), ignore_index=ignored)
    return (start + end) / 2


# ------------------------------------------------------------------------ resizing helpers


def _owner(root, path: str):
    """The object holding attribute path ``a.b.0.c`` minus its last part, and that part."""
    *parts, attr = path.split(".")
    obj = root
    for part in parts:
        if part.isdigit():
            obj = obj[int(part)]
        else:  # sub-layers Keras reserves the name of sit under a trailing "_" (``output_``)
            obj = vars(obj)[part + "_"] if part + "_" in vars(obj) else getattr(obj, part)
    return obj, spec_attribute(obj, attr)


def _replace_attribute(owner: keras.layers.Layer, attr: str, value) -> None:
    """Swap a tracked variable or sub-layer for another (e.g. of a new vocabulary size).

    Keras locks a built layer's state and only untracks variables on ``del``, so this unlocks
    its tracker, untracks the old value, sets the new one and locks again.
    """
    old = getattr(owner, attr)
    tracker = owner._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        if isinstance(old, keras.Variable):
            delattr(owner, attr)
        else:
            tracker.untrack(old)
        setattr(owner, attr, value)
    finally:
        if was_locked:
            tracker.lock()


# ---------------------------------------------------------------------------------- models


class TFData2VecTextPreTrainedModel(TFData2VecPreTrainedModel):
    """Base of the Keras text classes: config class, input name, embedding resizing (not built directly).

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2VecTextConfig
    base_model_prefix = "data2vec_text"
    main_input_name = "input_ids"

    def _backbone(self) -> "TFData2VecTextModel":
        return self if isinstance(self, TFData2VecTextModel) else self.data2vec_text

    def _make_spec(self):
        return weight_spec(self.config, self.architecture)

    def get_input_embeddings(self) -> Embedding:
        return self._backbone().embeddings.word_embeddings

    def set_input_embeddings(self, value: Embedding) -> None:
        old = self.get_input_embeddings()
        if not isinstance(value, Embedding) or tuple(value.embeddings.shape) != tuple(old.embeddings.shape):
            raise common.embedding_mismatch_error("a d2v_tf.layers.Embedding", tuple(old.embeddings.shape))
        _replace_attribute(self._backbone().embeddings, "word_embeddings", value)
        name_sublayers(self)

    def get_output_embeddings(self):
        return None

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None):
        """Change the vocabulary size: old rows are kept, new rows initialised like a fresh model,
        the LM decoder stays tied; ``config.vocab_size`` follows. Returns the new embedding.
        Compile again before training: the optimizer was built for the old variables."""
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = common.resized_vocab_size(old.num_embeddings, new_num_tokens, pad_to_multiple_of)
        new_config = self.config.copy(vocab_size=n)  # validates (pad id inside the vocabulary ...)
        old_spec = self.spec
        arrays = {k: v for k, v in self.state_arrays().items() if old_spec[k].tied_to is None}
        self.config.vocab_size = new_config.vocab_size
        new_spec = self._make_spec()
        changed = [p.name for p in new_spec.stored() if p.shape != old_spec[p.name].shape]
        fresh = new_spec.init_arrays(int(np.random.randint(0, 2**31 - 1)), names=changed)
        for name in changed:
            keep = min(arrays[name].shape[0], n)
            fresh[name][:keep] = arrays[name][:keep]
            p = new_spec[name]
            owner, attr = _owner(self, layouts.keras_name(p))
            old_var = getattr(owner, attr)
            value = layouts.to_keras_array(p, fresh[name].astype(p.dtype))
            _replace_attribute(owner, attr, keras.Variable(value, dtype=old_var.dtype, trainable=old_var.trainable,
                                                           name=old_var.name))
            if isinstance(owner, Linear):  # an untied decoder: Dense's width follows its kernel
                owner.units = int(value.shape[1])
        self.get_input_embeddings().num_embeddings = n
        for model in {id(self): self, id(self._backbone()): self._backbone()}.values():
            model.spec = model._make_spec()
        return self.get_input_embeddings()


class TFData2VecTextModel(TFData2VecTextPreTrainedModel):
    """The bare text encoder (a decoder with ``config.is_decoder``): hidden states and pooled first token.

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        add_pooling_layer: build the pooler (HF's default: True for text, False for vision).
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``BaseModelOutputWithPoolingAndCrossAttentions`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextModel"

    def __init__(self, config: Data2VecTextConfig, add_pooling_layer: bool = True, **kwargs):
        super().__init__(config, **kwargs)
        self.add_pooling_layer = add_pooling_layer
        self.spec = self._make_spec()
        self.embeddings = TFData2VecTextForTextEmbeddings(config)
        self.encoder = TFData2VecTextEncoder(config)
        self.pooler = TFData2VecTextPooler(config) if add_pooling_layer else None
        self.post_init()

    def _make_spec(self):
        return weight_spec(self.config, self.architecture, add_pooling_layer=self.add_pooling_layer)

    def get_config(self) -> dict:
        return {**super().get_config(), "add_pooling_layer": self.add_pooling_layer}

    @unpack_inputs
    @document_inputs("Data2VecTextModel")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             output_ffn_states=False, training=False):
        """``output_ffn_states`` (d2v only, for data2vec pretraining): the returned object also
        carries ``ffn_states``, each layer's feed-forward output before its residual."""
        config = self.config
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        use_cache = (config.use_cache if use_cache is None else use_cache) and config.is_decoder
        input_ids, token_type_ids, position_ids = (_tensor(t) for t in (input_ids, token_type_ids, position_ids))
        inputs_embeds = _tensor(inputs_embeds, "float32")
        past = legacy_past(past_key_values)
        batch, length, past_length = common.check_model_inputs(
            config, _info(input_ids), _shape(inputs_embeds), _info(token_type_ids, "token_type_ids"),
            _info(position_ids, "position_ids"),
            None if past is None else [[_shape(t) for t in layer] for layer in past],
        )

        reference = input_ids if input_ids is not None else inputs_embeds
        dyn_batch, dyn_length = ops.shape(reference)[0], ops.shape(reference)[1]
        key_length = past_length + dyn_length
        if attention_mask is None:
            attention_mask = ops.ones((dyn_batch, key_length), "float32")
        attention_mask = _tensor(attention_mask)
        common.check_attention_mask_shape(
            _shape(attention_mask), batch, length, None if length is None else past_length + length
        )
        bias = self_attention_bias(config, attention_mask, dyn_length)

        encoder_bias = None
        if not config.is_decoder:
            encoder_hidden_states = None  # encoders have no cross-attention (HF ignores them too)
        if encoder_hidden_states is not None:
            encoder_hidden_states = _tensor(encoder_hidden_states, "float32")
            shape = _shape(encoder_hidden_states)
            common.check_encoder_hidden_states(config, shape)
            source_length = shape[1]
            if past is not None and len(past[0]) == 4:
                source_length = _shape(past[0][2])[2]  # cached encoder projections are what is attended
            if encoder_attention_mask is None:
                encoder_attention_mask = ops.ones((dyn_batch, source_length), "float32")
            encoder_attention_mask = _tensor(encoder_attention_mask)
            common.check_attention_mask_shape(
                _shape(encoder_attention_mask), batch, length, source_length, "encoder_attention_mask"
            )
            encoder_bias = cross_attention_bias(encoder_attention_mask)

        x = self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
            inputs_embeds=inputs_embeds, past_length=past_length, training=training,
        )
        x, presents, hidden_states, attentions, cross_attentions, ffn_states = self.encoder(
            x, bias=bias, head_mask=head_mask, encoder_states=encoder_hidden_states, encoder_bias=encoder_bias,
            past=past, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, output_ffn_states=output_ffn_states, training=training,
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


    def forward_features(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None, *,
                         encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                         use_cache=False, training=False) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """The encoder call every head makes (the backbone half of a task model).

        Args:
            input_ids ... output_hidden_states, training: as in ``call``.
            encoder_hidden_states, encoder_attention_mask, past_key_values: decoder inputs
                (the causal LM head only).
            use_cache: return the key/value cache (off for every head but the causal LM).

        Returns:
            The model output as an object (``return_dict=True``).
        """
        return self(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, head_mask=head_mask, inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, training=training,
        )


class _TFLMHeadModel(TFData2VecTextPreTrainedModel):
    """What the two language-model heads share: the encoder and LM head, the tied decoder."""

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec_text = build_nested(TFData2VecTextModel, config, add_pooling_layer=False)
        self.lm_head = TFData2VecTextLMHead(config)

    def get_output_embeddings(self):
        """The decoder layer, or the word embeddings when they are tied."""
        return self.lm_head.decoder if self.lm_head.decoder is not None else self.get_input_embeddings()

    def _logits(self, hidden):
        return self.lm_head(hidden, tied_weight=self.get_input_embeddings().embeddings)

    def loss_from_outputs(self, outputs, labels):
        labels = _tensor(labels)
        common.check_same_shape("labels", _shape(labels), _shape(outputs.logits)[:2])
        common.check_label_ids("labels", tensor_info(labels), self.config.vocab_size)
        return self._lm_loss(outputs.logits, labels)


class TFData2VecTextForCausalLM(_TFLMHeadModel):
    """Decoder + LM head tied to the word embeddings; labels are the input ids (shifted in the loss).

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``CausalLMOutputWithCrossAttentions`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForCausalLM"

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        if not config.is_decoder:
            warnings.warn("TFData2VecTextForCausalLM attends both ways unless config.is_decoder=True", stacklevel=2)
        super().__init__(config, **kwargs)
        self.post_init()

    @staticmethod
    def _lm_loss(logits, labels):
        return causal_lm_loss(logits, labels)

    def loss_count(self, x, labels):
        return count_not_equal(ops.convert_to_tensor(labels)[:, 1:], common.IGNORE_INDEX)  # as causal_lm_loss shifts

    @unpack_inputs
    @document_inputs("Data2VecTextForCausalLM")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
             past_key_values=None, use_cache=None, output_attentions=None, output_hidden_states=None,
             return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        if labels is not None or (use_cache is None and training):
            use_cache = False  # a training step has no use for the cache
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, output_hidden_states, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            training=training,
        )
        out = CausalLMOutputWithCrossAttentions(
            None, self._logits(base.last_hidden_state), base.past_key_values, base.hidden_states, base.attentions,
            base.cross_attentions,
        )
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecTextForMaskedLM(_TFLMHeadModel):
    """Bidirectional encoder + LM head tied to the word embeddings; labels -100 are not scored.

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``MaskedLMOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForMaskedLM"

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.post_init()

    @staticmethod
    def _lm_loss(logits, labels):
        return cross_entropy(ops.reshape(logits, (-1, logits.shape[-1])), ops.reshape(labels, (-1,)))

    def loss_count(self, x, labels):
        return count_not_equal(labels, common.IGNORE_INDEX)

    @unpack_inputs
    @document_inputs("Data2VecTextForMaskedLM")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, output_hidden_states, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, training=training,
        )
        out = MaskedLMOutput(None, self._logits(base.last_hidden_state), base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class _PerPositionHeadModel(TFData2VecTextPreTrainedModel):
    """Heads on the encoder's last hidden state (no pooler): sequence and token classification
    share this call (-> ``_classify``; subclasses set ``output_class`` and define ``_classify`` and
    ``loss_from_outputs``); question answering keeps its own."""

    output_class: type = SequenceClassifierOutput

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = config.num_labels
        self.data2vec_text = build_nested(TFData2VecTextModel, config, add_pooling_layer=False)
        self._init_layer_weights()  # sequence classification with use_weighted_layer_sum only

    def _classify(self, hidden_states, training=False):
        raise NotImplementedError

    @unpack_inputs
    @document_inputs("Data2VecTextForSequenceClassification", "Data2VecTextForTokenClassification")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        weighted = self.layer_weights is not None  # the weighted sum needs (and returns) every hidden state
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, True if weighted else output_hidden_states, training=training,
        )
        x = weighted_layer_sum(base.hidden_states, self.layer_weights) if weighted else base.last_hidden_state
        out = self.output_class(None, self._classify(x, training), base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecTextForSequenceClassification(_PerPositionHeadModel):
    """Classification or regression from the first token (``problem_type`` picks the loss).

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``SequenceClassifierOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForSequenceClassification"

    output_class = SequenceClassifierOutput

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.classifier = TFData2VecTextClassificationHead(config)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = _tensor(labels)
        logits = outputs.logits
        check_classification_labels(self.config, _shape(labels), keras.backend.standardize_dtype(labels.dtype),
                                    logits.shape[0])
        if "int" in str(labels.dtype) and self.config.num_labels > 1:
            common.check_label_ids("labels", tensor_info(labels), self.config.num_labels)
        return classification_loss(logits, labels, self.config)

    def _classify(self, hidden_states, training=False):
        return self.classifier(hidden_states, training=training)


class TFData2VecTextForMultipleChoice(TFData2VecTextPreTrainedModel):
    """Each (question, choice) pair encoded on its own; the pooled output scores it.

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``MultipleChoiceModelOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForMultipleChoice"

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.data2vec_text = build_nested(TFData2VecTextModel, config, add_pooling_layer=True)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, 1)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = _tensor(labels)
        logits = outputs.logits
        common.check_same_shape("labels", _shape(labels), _shape(logits)[:1])
        common.check_label_ids("labels", tensor_info(labels), logits.shape[1])
        return cross_entropy(logits, labels)

    @unpack_inputs
    @document_inputs("Data2VecTextForMultipleChoice")
    def call(self, input_ids=None, token_type_ids=None, attention_mask=None, labels=None, position_ids=None,
             head_mask=None, inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None,
             training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        input_ids, inputs_embeds = _tensor(input_ids), _tensor(inputs_embeds, "float32")
        batch, choices, length = common.multiple_choice_shapes(_shape(input_ids), _shape(inputs_embeds))
        reference = input_ids if input_ids is not None else inputs_embeds
        num_choices = ops.shape(reference)[1]

        def flat(t, name):
            if t is None:
                return None
            t = _tensor(t)
            common.check_same_shape(name, _shape(t)[:3], (batch, choices, length))
            return ops.reshape(t, (-1,) + tuple(ops.shape(t)[2:]))

        base = self.data2vec_text.forward_features(
            flat(input_ids, "input_ids"), flat(attention_mask, "attention_mask"),
            flat(token_type_ids, "token_type_ids"), flat(position_ids, "position_ids"), head_mask,
            flat(inputs_embeds, "inputs_embeds"), output_attentions, output_hidden_states, training=training,
        )
        logits = self.classifier(self.dropout(base.pooler_output, training=training))
        logits = ops.reshape(logits, (-1, num_choices))
        out = MultipleChoiceModelOutput(None, logits, base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecTextForTokenClassification(_PerPositionHeadModel):
    """A label per token (-100: not scored).

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``TokenClassifierOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForTokenClassification"

    output_class = TokenClassifierOutput

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.dropout = Dropout(_classifier_dropout(config))
        self.classifier = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = _tensor(labels)
        common.check_same_shape("labels", _shape(labels), _shape(outputs.logits)[:2])
        common.check_label_ids("labels", tensor_info(labels), self.config.num_labels)
        return cross_entropy(ops.reshape(outputs.logits, (-1, self.config.num_labels)), ops.reshape(labels, (-1,)))

    def _classify(self, hidden_states, training=False):
        return self.classifier(self.dropout(hidden_states, training=training))

    def loss_count(self, x, labels):
        return count_not_equal(labels, common.IGNORE_INDEX)


class TFData2VecTextForQuestionAnswering(_PerPositionHeadModel):
    """Start and end logits per token for extractive question answering.

    Args:
        config: a ``Data2VecTextConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``QuestionAnsweringModelOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecTextForQuestionAnswering"

    def __init__(self, config: Data2VecTextConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.qa_outputs = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        """``labels``: {"start_positions", "end_positions"}, a (start, end) pair, or (batch, 2)."""
        if isinstance(labels, dict):
            missing = {"start_positions", "end_positions"} - set(labels)
            if missing:
                raise ValueError(f"question answering labels lack {sorted(missing)}")
            start, end = labels["start_positions"], labels["end_positions"]
        elif isinstance(labels, (tuple, list)) and len(labels) == 2:
            start, end = labels
        else:
            labels = _tensor(labels)
            if len(labels.shape) != 2 or labels.shape[-1] != 2:
                raise ValueError(
                    "question answering labels must be {'start_positions', 'end_positions'}, a (start, end) pair "
                    f"or a (batch, 2) tensor, got shape {_shape(labels)}"
                )
            start, end = labels[:, 0], labels[:, 1]
        return question_answering_loss(outputs.start_logits, outputs.end_logits, start, end)

    def metric_outputs(self, outputs):
        return ops.stack([outputs.start_logits, outputs.end_logits], axis=-1)

    @unpack_inputs
    @document_inputs("Data2VecTextForQuestionAnswering")
    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, head_mask=None,
             inputs_embeds=None, start_positions=None, end_positions=None, output_attentions=None,
             output_hidden_states=None, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        common.check_question_answering(self.config)
        base = self.data2vec_text.forward_features(
            input_ids, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds,
            output_attentions, output_hidden_states, training=training,
        )
        logits = self.qa_outputs(base.last_hidden_state)
        out = QuestionAnsweringModelOutput(None, logits[..., 0], logits[..., 1], base.hidden_states, base.attentions)
        if start_positions is not None and end_positions is not None:
            out.loss = question_answering_loss(out.start_logits, out.end_logits, start_positions, end_positions)
        return finish(out, return_dict)


__all__ = [
    "TFData2VecTextForCausalLM", "TFData2VecTextForMaskedLM", "TFData2VecTextForMultipleChoice",
    "TFData2VecTextForQuestionAnswering", "TFData2VecTextForSequenceClassification",
    "TFData2VecTextForTokenClassification", "TFData2VecTextModel", "TFData2VecTextPreTrainedModel",
]
