"""Text cases: the seven classes over the position-embedding variants, a decoder and a
cross-attention decoder, with padded batches and labels for every head (-100 included)."""

from __future__ import annotations

import numpy as np

from crosscheck.cases.base import Case
from d2v_common.configs import Data2VecTextConfig
from crosscheck.cases import tiny

SMALL = dict(tiny.TEXT, num_labels=3)
# The released checkpoints' shape (facebook/data2vec-text-base).
BASE = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
# At base size the LM logits are dot products of 768-wide vectors with random tied embeddings
# (std 0.2): they reach |25| (std 5.6), where float32's relative rounding (~1e-6, measured) from
# differently ordered reductions (fused vs explicit attention, oneDNN vs ATen matmuls) is a few
# 1e-5 in absolute terms. Every other output stays at 1e-5.
BASE_LM_LOGITS_TOLERANCE = 1e-4

VARIANTS = {
    "abs": dict(type_vocab_size=2),
    "relk": dict(position_embedding_type="relative_key", hidden_act="gelu_new", type_vocab_size=1),
    "relkq": dict(
        position_embedding_type="relative_key_query", hidden_act="relu", pad_token_id=0, classifier_dropout=0.3
    ),
    "dec": dict(is_decoder=True, hidden_act="silu"),
    "dec-relkq": dict(is_decoder=True, position_embedding_type="relative_key_query"),
    "xattn": dict(is_decoder=True, add_cross_attention=True, type_vocab_size=2),
}

HEADS = {
    "model": "Data2VecTextModel",
    "causal": "Data2VecTextForCausalLM",
    "mlm": "Data2VecTextForMaskedLM",
    "seqcls": "Data2VecTextForSequenceClassification",
    "mc": "Data2VecTextForMultipleChoice",
    "tokcls": "Data2VecTextForTokenClassification",
    "qa": "Data2VecTextForQuestionAnswering",
}

# (name suffix, head, variant, extra config, extra call kwargs)
SMALL_CASES = [
    ("abs", "model", "abs", {}, {}),
    ("relk", "model", "relk", {}, {}),
    # HF builds a cache whenever use_cache is on and then misplaces relative query positions on
    # the first pass; without a cache its numbers are the reference.
    ("dec-relkq", "model", "dec-relkq", {}, dict(use_cache=False)),
    ("xattn", "model", "xattn", {}, {}),
    ("dec", "causal", "dec", {}, {}),
    ("dec-relkq", "causal", "dec-relkq", {}, {}),
    ("xattn", "causal", "xattn", {}, {}),
    ("abs", "mlm", "abs", {}, {}),
    ("relkq-untied", "mlm", "relkq", {"tie_word_embeddings": False}, {}),
    ("relk", "seqcls", "relk", {}, {}),
    ("regression", "seqcls", "abs", {"num_labels": 1}, {}),
    ("multilabel", "seqcls", "relkq", {"problem_type": "multi_label_classification"}, {}),
    ("abs", "mc", "abs", {}, {}),
    ("relkq", "mc", "relkq", {}, {}),
    ("relk", "tokcls", "relk", {}, {}),
    ("relkq", "qa", "relkq", {"num_labels": 2}, {}),
]


def _ids(rng, config, shape):
    """Token ids above the special ids, with no accidental pad tokens."""
    low = max(3, (config.pad_token_id or 0) + 1)
    return rng.integers(low, config.vocab_size, size=shape).astype(np.int64)


def _padded(rng, config, batch, length):
    """Ids and mask; every row after the first ends in pad tokens (mask 0)."""
    ids = _ids(rng, config, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for b in range(1, batch):
        n = min(b + 1, length - 2)
        ids[b, -n:] = config.pad_token_id
        mask[b, -n:] = 0
    return ids, mask


def _inputs(config: Data2VecTextConfig, head: str, batch: int = 2, length: int = 9):
    def make(rng: np.random.Generator) -> dict:
        if head == "mc":
            choices = 3
            ids, mask = _padded(rng, config, batch * choices, length)
            out = {
                "input_ids": ids.reshape(batch, choices, length),
                "attention_mask": mask.reshape(batch, choices, length),
            }
            if config.type_vocab_size > 1:
                types = rng.integers(0, config.type_vocab_size, (batch, choices, length))
                out["token_type_ids"] = types.astype(np.int64)
            out["labels"] = rng.integers(0, choices, (batch,)).astype(np.int64)
            return out
        ids, mask = _padded(rng, config, batch, length)
        out = {"input_ids": ids, "attention_mask": mask}
        if config.type_vocab_size > 1:
            out["token_type_ids"] = rng.integers(0, config.type_vocab_size, (batch, length)).astype(np.int64)
        if config.add_cross_attention:
            source = 5
            out["encoder_hidden_states"] = rng.standard_normal((batch, source, config.hidden_size)).astype(np.float32)
            enc_mask = np.ones((batch, source), np.int64)
            enc_mask[-1, -2:] = 0
            out["encoder_attention_mask"] = enc_mask
        ignored = mask == 0
        if head == "causal":
            labels = ids.copy()
            labels[ignored] = -100
            out["labels"] = labels
        elif head == "mlm":
            labels = _ids(rng, config, (batch, length))
            labels[rng.random((batch, length)) < 0.5] = -100
            labels[0, 0] = 5  # at least one scored position
            out["labels"] = labels
        elif head == "seqcls":
            if config.num_labels == 1:
                out["labels"] = rng.standard_normal((batch,)).astype(np.float32)
            elif config.problem_type == "multi_label_classification":
                out["labels"] = rng.integers(0, 2, (batch, config.num_labels)).astype(np.float32)
            else:
                out["labels"] = rng.integers(0, config.num_labels, (batch,)).astype(np.int64)
        elif head == "tokcls":
            labels = rng.integers(0, config.num_labels, (batch, length)).astype(np.int64)
            labels[ignored] = -100
            out["labels"] = labels
        elif head == "qa":
            out["start_positions"] = rng.integers(0, length, (batch,)).astype(np.int64)
            end = rng.integers(0, length, (batch,)).astype(np.int64)
            end[-1] = length + 7  # outside the input: clamped and ignored, as in HF
            out["end_positions"] = end
        return out

    return make


def cases(size: str = "small") -> list[Case]:
    out = []
    if size == "base":
        for head, arch in HEADS.items():
            extra = dict(is_decoder=True) if head == "causal" else {}
            if head == "qa":
                extra["num_labels"] = 2
            config = Data2VecTextConfig(**BASE, **extra)
            tolerances = {"logits": BASE_LM_LOGITS_TOLERANCE} if head in ("causal", "mlm") else {}
            out.append(Case(f"text-{head}-base", arch, config, _inputs(config, head, length=16), tolerances=tolerances))
        return out
    for suffix, head, variant, extra, call in SMALL_CASES:
        config = Data2VecTextConfig(**{**SMALL, **VARIANTS[variant], **extra})
        out.append(
            Case(
                f"text-{head}-{suffix}",
                HEADS[head],
                config,
                _inputs(config, head),
                call_kwargs=dict(output_hidden_states=True, output_attentions=True, **call),
            )
        )
    return out
