"""The ``Args:`` / ``Returns:`` sections of every model's ``forward`` (PyTorch) and ``call``
(Keras), written once for both frameworks.

A model method keeps its own summary in its docstring and is decorated with
``@document_inputs("Data2VecTextForMaskedLM")`` (the architectures it serves): the decorator
appends ``Args:`` (one line per parameter of its signature: the architecture's own entry, else
the family's, else the shared one) and ``Returns:``, so ``help(Class.forward)`` shows every
input's shape and dtype. A parameter with no entry is listed bare, and
``tests/test_registry.py`` fails on it.

Axis names: ``batch``; ``seq_len`` (tokens); ``samples`` (audio samples); ``frames`` (audio
frames after the feature encoder, ``d2v_common.models.audio.feature_lengths``); ``H``, ``W`` (image
height and width); ``patches`` = (H / patch_size) * (W / patch_size); ``hidden`` =
``config.hidden_size``; ``heads``, ``layers`` = the config's attention heads and layers.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable

from d2v_common.models.registry import architecture_info

# ----------------------------------------------------------------------------- inputs
SHARED = {
    "output_attentions": "bool, optional: also return each layer's attention weights, (batch, heads, "
                         "seq, seq) each (default: ``config.output_attentions``).",
    "output_hidden_states": "bool, optional: also return the embeddings' and every layer's output, "
                            "(batch, seq, hidden) each (default: ``config.output_hidden_states``).",
    "return_dict": "bool, optional: the output object when True (default: ``config.use_return_dict``), "
                   "else the tuple of its fields that are not None.",
    "training": "bool, optional (Keras): dropout on, as Keras' ``training`` flag (default False).",
    "head_mask": "(heads,) or (layers, heads) float32, optional: 1 keeps an attention head, 0 silences it.",
    "output_ffn_states": "bool, optional (d2v only, for data2vec pretraining): also return ``ffn_states``, "
                         "each layer's feed-forward output before its residual, (batch, seq, hidden) each.",
}
TEXT = {
    "input_ids": "(batch, seq_len) int64: token ids.",
    "attention_mask": "(batch, seq_len) 0/1 ints, optional: 1 for tokens to attend to, 0 for padding.",
    "token_type_ids": "(batch, seq_len) int64, optional: segment ids below ``type_vocab_size`` (default zeros).",
    "position_ids": "(batch, seq_len) int64, optional: position indices (default: counted past "
                    "``pad_token_id`` over the non-pad tokens, as RoBERTa).",
    "inputs_embeds": "(batch, seq_len, hidden) float32, optional: word embeddings given instead of input_ids.",
    "encoder_hidden_states": "(batch, source_len, hidden) float32, optional: what cross-attention reads "
                             "(decoders with ``add_cross_attention``).",
    "encoder_attention_mask": "(batch, source_len) 0/1 ints, optional: the padding of encoder_hidden_states.",
    "past_key_values": "per layer (key, value), each (batch, heads, past_len, hidden / heads) float32 "
                       "(HF's legacy form; a Cache object works too), optional: a decoder's earlier steps.",
    "use_cache": "bool, optional: return past_key_values for the next step (decoders; default ``config.use_cache``).",
    "cache_position": "(seq_len,) int64, optional: accepted for HF compatibility (the cache tracks its length).",
}
AUDIO = {
    "input_values": "(batch, samples) float32: raw 16 kHz waveforms, normalised as the feature extractor does.",
    "attention_mask": "(batch, samples) 0/1 ints, optional: 1 for real samples, 0 for padding.",
    "mask_time_indices": "(batch, frames) bool, optional: frames replaced by the learned ``masked_spec_embed``.",
}
VISION = {
    "pixel_values": "(batch, num_channels, H, W) float32: normalised images, H and W the config's "
                    "``image_size`` (or multiples of ``patch_size`` with interpolate_pos_encoding).",
    "bool_masked_pos": "(batch, patches) bool, optional: patches replaced by the mask token.",
    "interpolate_pos_encoding": "bool, optional: interpolate the position embeddings to another image size.",
}
FAMILY_INPUTS = {"text": TEXT, "audio": AUDIO, "vision": VISION}

# ----------------------------------------------------------------------------- per architecture
_LAYERS = ("``hidden_states`` ((layers + 1) x (batch, seq, hidden)) and ``attentions`` (layers x (batch, heads, "
           "seq, seq)) when asked for.")
_MC = "(batch, num_choices, seq_len)"

# architecture -> {argument or "returns": text}
ARCHITECTURES: dict[str, dict[str, str]] = {
    "Data2VecTextModel": {
        "returns": "BaseModelOutputWithPoolingAndCrossAttentions: ``last_hidden_state`` (batch, seq_len, hidden); "
                   "``pooler_output`` (batch, hidden), None without pooling layer; ``past_key_values`` with "
                   "use_cache; ``cross_attentions`` (layers x (batch, heads, seq_len, source_len)); " + _LAYERS,
    },
    "Data2VecTextForCausalLM": {
        "labels": "(batch, seq_len) int64, optional: next-token targets (the model shifts them), -100 ignored.",
        "returns": "CausalLMOutputWithCrossAttentions: ``loss`` () with labels; ``logits`` (batch, seq_len, "
                   "vocab_size); ``past_key_values``; ``cross_attentions``; " + _LAYERS,
    },
    "Data2VecTextForMaskedLM": {
        "labels": "(batch, seq_len) int64, optional: the masked tokens' ids, -100 elsewhere.",
        "returns": "MaskedLMOutput: ``loss`` () with labels; ``logits`` (batch, seq_len, vocab_size); " + _LAYERS,
    },
    "Data2VecTextForSequenceClassification": {
        "labels": "(batch,) int64 class ids, (batch,) float32 for regression (num_labels 1), or (batch, "
                  "num_labels) float32 0/1 for multi-label, optional (``config.problem_type``).",
        "returns": "SequenceClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
    "Data2VecTextForTokenClassification": {
        "labels": "(batch, seq_len) int64, optional: class ids per token, -100 ignored.",
        "returns": "TokenClassifierOutput: ``loss`` () with labels; ``logits`` (batch, seq_len, num_labels); "
                   + _LAYERS,
    },
    "Data2VecTextForMultipleChoice": {
        "input_ids": _MC + " int64: token ids of every (prompt, choice) pair.",
        "attention_mask": _MC + " 0/1 ints, optional: 1 for tokens, 0 for padding.",
        "token_type_ids": _MC + " int64, optional: segment ids.",
        "position_ids": _MC + " int64, optional: position indices.",
        "inputs_embeds": "(batch, num_choices, seq_len, hidden) float32, optional: instead of input_ids.",
        "labels": "(batch,) int64, optional: the index of the right choice.",
        "returns": "MultipleChoiceModelOutput: ``loss`` () with labels; ``logits`` (batch, num_choices); "
                   "``hidden_states`` / ``attentions`` over the batch * num_choices sequences when asked for.",
    },
    "Data2VecTextForQuestionAnswering": {
        "start_positions": "(batch,) int64, optional: the answer's first token (positions past the "
                           "input are left out of the loss).",
        "end_positions": "(batch,) int64, optional: the answer's last token; the loss needs both.",
        "returns": "QuestionAnsweringModelOutput: ``loss`` () with both positions; ``start_logits`` and "
                   "``end_logits`` (batch, seq_len); " + _LAYERS,
    },
    "Data2VecAudioModel": {
        "returns": "Wav2Vec2BaseModelOutput: ``last_hidden_state`` (batch, frames, hidden), with the adapter "
                   "(batch, fewer frames, output_hidden_size); ``extract_features`` (batch, frames, "
                   "conv_dim[-1]); " + _LAYERS,
    },
    "Data2VecAudioForCTC": {
        "labels": "(batch, target_len) int64, optional: character ids below vocab_size (not the blank "
                  "``pad_token_id``), -100 after the end of each target.",
        "returns": "CausalLMOutput: ``loss`` () with labels (``ctc_loss_reduction``); ``logits`` (batch, frames, "
                   "vocab_size); " + _LAYERS,
    },
    "Data2VecAudioForSequenceClassification": {
        "labels": "(batch,) int64, optional: class ids.",
        "returns": "SequenceClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
    "Data2VecAudioForAudioFrameClassification": {
        "labels": "(batch, frames, num_labels) float32, optional: per-frame scores; the loss takes their argmax.",
        "returns": "TokenClassifierOutput: ``loss`` () with labels; ``logits`` (batch, frames, num_labels); "
                   + _LAYERS,
    },
    "Data2VecAudioForXVector": {
        "labels": "(batch,) int64, optional: speaker (class) ids.",
        "returns": "XVectorOutput: ``loss`` () with labels (AM-softmax); ``logits`` (batch, num_labels); "
                   "``embeddings`` (batch, xvector_output_dim); " + _LAYERS,
    },
    "Data2VecVisionModel": {
        "returns": "Data2VecVisionModelOutputWithPooling: ``last_hidden_state`` (batch, 1 + patches, hidden), "
                   "CLS first; ``pooler_output`` (batch, hidden), None without pooling layer; " + _LAYERS,
    },
    "Data2VecVisionForImageClassification": {
        "labels": "(batch,) int64 class ids, optional (float32 for regression or multi-label, as "
                  "``config.problem_type`` says).",
        "returns": "ImageClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
    "Data2VecVisionForSemanticSegmentation": {
        "labels": "(batch, H, W) int64, optional: class id per pixel, ``semantic_loss_ignore_index`` ignored.",
        "returns": "SemanticSegmenterOutput: ``loss`` () with labels; ``logits`` (batch, num_labels, H / 4, W / 4); "
                   + _LAYERS,
    },
    "Data2Vec2TextModel": {
        "attention_mask": "(batch, seq_len) 0/1 ints, optional: 1 for tokens, 0 for padding (default: "
                          "input_ids != pad_token_id).",
        "returns": "BaseModelOutput: ``last_hidden_state`` (batch, seq_len, hidden); " + _LAYERS,
    },
    "Data2Vec2TextForSequenceClassification": {
        "labels": "(batch,) int64 class ids (float32 for regression), optional.",
        "returns": "SequenceClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
    "Data2Vec2AudioModel": {
        "returns": "Wav2Vec2BaseModelOutput: ``last_hidden_state`` (batch, frames, hidden); ``extract_features`` "
                   "(batch, frames, conv_dim[-1]); " + _LAYERS,
    },
    "Data2Vec2AudioForCTC": {
        "labels": "(batch, target_len) int64, optional: character ids (not the blank), -100 after each target.",
        "returns": "CausalLMOutput: ``loss`` () with labels; ``logits`` (batch, frames, vocab_size); " + _LAYERS,
    },
    "Data2Vec2AudioForSequenceClassification": {
        "labels": "(batch,) int64, optional: class ids.",
        "returns": "SequenceClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
    "Data2Vec2VisionModel": {
        "returns": "BaseModelOutput: ``last_hidden_state`` (batch, num_extra_tokens + patches, hidden), the extra "
                   "(CLS) tokens first; " + _LAYERS,
    },
    "Data2Vec2VisionForImageClassification": {
        "labels": "(batch,) int64, optional: class ids.",
        "returns": "ImageClassifierOutput: ``loss`` () with labels; ``logits`` (batch, num_labels); " + _LAYERS,
    },
}
_PRETRAINING_RETURNS = ("Data2VecPreTrainingOutput: ``loss`` (); ``target_var`` and ``pred_var`` (); ``mask`` "
                        "{shape} bool, the positions in the loss; ``prediction`` and ``target`` {shape} + (hidden,) "
                        "float32.")
ARCHITECTURES.update({
    "Data2VecAudioForPreTraining": {
        "mask_time_indices": "(batch, frames) bool, optional: the frames to mask (default: spans drawn from "
                             "the pretraining config).",
        "returns": _PRETRAINING_RETURNS.format(shape="(batch, frames)"),
    },
    "Data2VecTextForPreTraining": {
        "masked_input_ids": "(batch, seq_len) int64, optional: the student's corrupted tokens; given "
                            "together with masked_positions, else both are drawn (``bert_mask``).",
        "masked_positions": "(batch, seq_len) bool, optional: the tokens in the loss.",
        "returns": _PRETRAINING_RETURNS.format(shape="(batch, seq_len)"),
    },
    "Data2VecVisionForPreTraining": {
        "bool_masked_pos": "(batch, patches) bool, optional: the patches to mask (default: blocks drawn "
                           "from the pretraining config).",
        "returns": _PRETRAINING_RETURNS.format(shape="(batch, patches)"),
    },
})


_PRETRAINING2_RETURNS = ("Data2Vec2PreTrainingOutput: ``loss`` () (every loss summed / masked positions, as fairseq); "
                         "``losses`` name -> () summed loss; ``sample_size`` () masked positions; ``mask`` "
                         "(batch * clone_batch, {t}) bool; ``prediction`` (batch * clone_batch, {t}, hidden); "
                         "``target`` (batch, {t}, hidden) float32.")
_PRECOMPUTED_MASK = ("(batch * clone_batch, {t}) bool: the positions to mask, True = masked, sample i's clones at "
                     "rows i*c .. i*c+c-1; every row masks as many positions.")
ARCHITECTURES.update({
    name: {"precomputed_mask": _PRECOMPUTED_MASK.format(t=t), "returns": _PRETRAINING2_RETURNS.format(t=t)}
    for name, t in (("Data2Vec2AudioForPreTraining", "frames"), ("Data2Vec2TextForPreTraining", "seq_len"),
                    ("Data2Vec2VisionForPreTraining", "patches"))
})


def _family_inputs(architecture: str) -> dict[str, str]:
    return FAMILY_INPUTS[architecture_info(architecture).family.rstrip("2")]


def argument_doc(architecture: str, name: str) -> str | None:
    """The text of argument ``name`` for ``architecture`` (None when nothing documents it)."""
    for table in (ARCHITECTURES[architecture], _family_inputs(architecture), SHARED):
        if name in table:
            return table[name]
    return None


def _item(name: str, text: str) -> str:
    return textwrap.fill(f"{name}: {text}", width=100, initial_indent="    ", subsequent_indent="        ")


def inputs_doc(architectures: tuple[str, ...], parameters: list[str], summary: str = "") -> str:
    """``summary`` followed by the ``Args:`` and ``Returns:`` sections for ``parameters``; where
    the architectures differ, each one's text is prefixed with its task."""
    lines = [summary, "", "Args:"] if summary else ["Args:"]
    for name in parameters:
        texts = {arch: argument_doc(arch, name) for arch in architectures}
        if None in texts.values():
            lines.append(f"    {name}:")  # undocumented: tests/test_registry.py fails on it
        elif len(set(texts.values())) == 1:
            lines.append(_item(name, texts[architectures[0]]))
        else:
            lines.append(_item(name, " ".join(f"{architecture_info(a).task}: {t}" for a, t in texts.items())))
    lines += ["", "Returns:"]
    for arch in architectures:
        text = ARCHITECTURES[arch]["returns"]
        if len(architectures) > 1:
            lines.append(_item(arch, text))
        else:
            lines.append(textwrap.fill(text, width=100, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines)


def document_inputs(*architectures: str) -> Callable:
    """Decorator for a model's ``forward`` / ``call``: appends ``Args:`` and ``Returns:`` for the
    architectures it serves (several when one method serves several heads)."""
    for arch in architectures:
        architecture_info(arch)  # an unknown name fails at import

    def decorate(method: Callable) -> Callable:
        parameters = [p for p in inspect.signature(method).parameters if p != "self"]
        method.__doc__ = inputs_doc(architectures, parameters, inspect.cleandoc(method.__doc__ or ""))
        return method

    return decorate


__all__ = ["ARCHITECTURES", "AUDIO", "SHARED", "TEXT", "VISION", "argument_doc", "document_inputs", "inputs_doc"]
