"""Audio cases: the five classes over config variants, on padded batches with labels for every head."""

from __future__ import annotations

import numpy as np

from crosscheck.cases.base import Case
from d2v_common.models.audio import feature_lengths
from d2v_common.configs import Data2VecAudioConfig
from crosscheck.cases import tiny

# mask_time_prob=0: eval stays deterministic and the spec free of the mask embedding (one
# variant keeps it).
SMALL = dict(tiny.AUDIO_HEADS, tdnn_kernel=[3, 3, 1], num_labels=3, mask_time_prob=0.0)
BASE = dict(num_labels=4)

# A "sum"-reduced CTC loss adds ~120 per-frame log-probabilities into a value near 140, where one
# float32 ulp is 1.5e-5: an absolute 1e-5 would demand bit-exact logits. TF's CTC itself matches
# torch's bit for bit on identical logits (tests/test_audio.py); this bound covers the rounding
# carried in from the ~1e-6 logit differences (measured: 3e-5, two ulps).
CTC_SUM_LOSS_TOLERANCE = 1e-4
# Base size only: seven 512-channel convs (1536-term dot products) differ by ~4e-6 per conv between
# TF's and torch's CPU kernels; the feature projection's LayerNorm scales that onto values up to ~11
# (measured: 1.45e-5 on extract_features; the encoder output stays under 1e-5).
BASE_FEATURES_TOLERANCE = 5e-5

HEADS = {
    "model": "Data2VecAudioModel",
    "ctc": "Data2VecAudioForCTC",
    "seq": "Data2VecAudioForSequenceClassification",
    "frame": "Data2VecAudioForAudioFrameClassification",
    "xvector": "Data2VecAudioForXVector",
}

# variant -> (config changes, heads, samples, padded). The first case of each class is the one
# tests/test_training.py steps: for CTC that is the mean-reduced adapter case, since a summed
# CTC loss near 140 cannot agree to 1e-5 in float32 (see CTC_SUM_LOSS_TOLERANCE).
VARIANTS = {
    "adapter": (
        dict(add_adapter=True, output_hidden_size=24, num_adapter_layers=2, ctc_loss_reduction="mean"),
        ("model", "ctc"), 800, True,
    ),
    "plain": ({}, ("model", "ctc", "seq", "frame", "xvector"), 600, True),
    "wsum-bias": (
        dict(use_weighted_layer_sum=True, conv_bias=True, conv_pos_kernel_size=5, hidden_act="gelu_new"),
        ("seq", "frame", "xvector"), 640, True,
    ),
    "mean-zinf": (dict(ctc_loss_reduction="mean", ctc_zero_infinity=True, pad_token_id=3), ("ctc",), 480, True),
    # adapter without the projection (output_hidden_size == hidden_size), stride 3, one layer
    "adapter-noproj": (dict(add_adapter=True, num_adapter_layers=1, adapter_stride=3), ("model",), 500, True),
    # attention_mask=None, and the default mask_time_prob (mask embedding present, unused in eval)
    "nomask": (dict(mask_time_prob=0.05, mask_time_length=4), ("model",), 400, False),
}


def _inputs(config: Data2VecAudioConfig, head: str, samples: int, padded: bool):
    def make(rng: np.random.Generator) -> dict:
        x = rng.standard_normal((2, samples)).astype(np.float32)
        out = {"input_values": x}
        if padded:
            mask = np.ones((2, samples), dtype=np.int64)
            mask[1, (3 * samples) // 4 :] = 0
            x[1, (3 * samples) // 4 :] = 0.0  # padding is silence, as the feature extractor writes it
            out["attention_mask"] = mask
        if head == "ctc":
            blank = config.pad_token_id
            ids = [i for i in range(config.vocab_size) if i != blank]
            labels = np.full((2, 6), -100, dtype=np.int64)
            labels[0] = rng.choice(ids, 6)
            labels[1, :3] = rng.choice(ids, 3)
            out["labels"] = labels
        elif head in ("seq", "xvector"):
            out["labels"] = rng.integers(0, config.num_labels, size=(2,)).astype(np.int64)
        elif head == "frame":
            frames = int(feature_lengths(config, samples, add_adapter=False))
            out["labels"] = rng.random((2, frames, config.num_labels)).astype(np.float32)
        return out

    return make


def _tolerances(config: Data2VecAudioConfig, head: str, base: bool = False) -> dict:
    out = {"loss": CTC_SUM_LOSS_TOLERANCE} if head == "ctc" and config.ctc_loss_reduction == "sum" else {}
    if base:
        out["extract_features"] = BASE_FEATURES_TOLERANCE
    return out


def cases(size: str = "small") -> list[Case]:
    out = []
    if size == "base":
        config = Data2VecAudioConfig(**BASE)
        for head, arch in HEADS.items():
            out.append(
                Case(f"audio-{head}-base", arch, config, _inputs(config, head, 16000, True),
                     tolerances=_tolerances(config, head, base=True))
            )
        return out
    for variant, (extra, heads, samples, padded) in VARIANTS.items():
        config = Data2VecAudioConfig(**{**SMALL, **extra})
        for head in heads:
            out.append(
                Case(
                    f"audio-{head}-{variant}",
                    HEADS[head],
                    config,
                    _inputs(config, head, samples, padded),
                    call_kwargs=dict(output_hidden_states=True, output_attentions=True),
                    tolerances=_tolerances(config, head),
                )
            )
    return out
