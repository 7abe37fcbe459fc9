"""The bad-input table (issue 10): every row is refused with a ValueError / TypeError naming the
problem, in both frameworks, for every class the row applies to.

Each row also carries the same call with the offending value fixed (the limit itself, the ignore
index, the right shape ...); that call must run, so the error is shown to come from the named
problem and nothing else. The all-padding row is the one non-error row: finite outputs, equal to
HF's wherever HF's are meaningful.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import d2v_tf
import d2v_torch
from crosscheck.cases import audio as audio_cases
from crosscheck.cases import text as text_cases
from crosscheck.cases import vision as vision_cases
from crosscheck.cases.base import Case
from crosscheck.runner import hf_model, max_abs_diff, to_numpy_outputs, torch_inputs
from d2v_common.models import audio as A
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.spec import weight_spec

# One config per family that every row can use: QA needs two labels; an explicit problem_type
# keeps cached models from fixing it on first use; the mask token / embedding exist for the
# masked-position rows.
CONFIGS = {
    "text": Data2VecTextConfig(**{**text_cases.SMALL, "num_labels": 2}, problem_type="single_label_classification"),
    "audio": Data2VecAudioConfig(**{**audio_cases.SMALL, "mask_time_prob": 0.05, "mask_time_length": 2}),
    "vision": Data2VecVisionConfig(
        **vision_cases.SMALL, use_mask_token=True, problem_type="single_label_classification"
    ),
}
ARCHS = {
    "text": list(text_cases.HEADS.values()),
    "audio": list(audio_cases.HEADS.values()),
    "vision": list(vision_cases.HEADS.values()),
}
FAMILY = {arch: family for family, archs in ARCHS.items() for arch in archs}

TEXT_LIMIT = CONFIGS["text"].max_sequence_length  # 38: positions run from pad+1=2 to 39
AUDIO_SAMPLES, AUDIO_KEPT = 200, 150  # row 1 is padded after 150 samples
AUDIO_FRAMES = int(A.feature_lengths(CONFIGS["audio"], AUDIO_SAMPLES))  # 19
AUDIO_KEPT_FRAMES = int(A.feature_lengths(CONFIGS["audio"], AUDIO_KEPT))  # 14


@functools.lru_cache(maxsize=None)
def _model(arch: str, framework: str):
    config = CONFIGS[FAMILY[arch]]
    arrays = weight_spec(config, arch).random_arrays(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CausalLM without is_decoder warns; irrelevant here
        if framework == "torch":
            model = getattr(d2v_torch, arch)(config).eval()
        else:
            model = getattr(d2v_tf, "TF" + arch)(config)
    model.load_arrays(arrays)
    return model


def _call(arch: str, framework: str, inputs: dict):
    model = _model(arch, framework)
    if framework == "torch":
        with torch.no_grad():
            return model(**torch_inputs(inputs), return_dict=True)
    return model(**inputs, return_dict=True, training=False)


# ----------------------------------------------------------------------------- valid inputs


def _text_inputs(arch: str, batch: int = 2, length: int = 5) -> dict:
    rng = np.random.default_rng(0)
    shape = (batch, 3, length) if arch.endswith("MultipleChoice") else (batch, length)
    ids = rng.integers(3, 99, size=shape).astype(np.int64)
    mask = np.ones(shape, np.int64)
    mask[1:, ..., -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _audio_inputs(samples: int = AUDIO_SAMPLES) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, samples)).astype(np.float32)
    mask = np.ones((2, samples), np.int64)
    mask[1, AUDIO_KEPT:] = 0
    x[1, AUDIO_KEPT:] = 0.0
    return {"input_values": x, "attention_mask": mask}


def _vision_inputs(size=(32, 32), channels: int = 3, batch: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {"pixel_values": rng.standard_normal((batch, channels, *size)).astype(np.float32)}


# The one range message (d2v_common.models.losses.label_range_message) every class-label head gives.
TEXT_RANGE = CLASS_RANGE = r"labels must be in \[0, {n}\) or -100 to ignore, got \[{n}\]"
SEGMENTATION_RANGE = r"labels must be in \[0, {n}\) or {ignore} to ignore, got \[{n}\]"


# (good labels, an offending value for index 0 of the flat labels, a value that fixes it, the
#  error message naming it) per head whose labels are class ids. QA positions outside the input
# are valid (clamped and ignored, as in HF), so QA has no range row; frame classification takes
# scores, not ids.
def _labels(arch: str):
    n_text, n_audio, n_vision = (CONFIGS[f].num_labels for f in ("text", "audio", "vision"))
    vocab_text, vocab_audio = CONFIGS["text"].vocab_size, CONFIGS["audio"].vocab_size
    if arch in ("Data2VecTextForCausalLM", "Data2VecTextForMaskedLM"):
        labels = _text_inputs(arch)["input_ids"].copy()
        labels[1, -2:] = -100
        return labels, vocab_text, -100, TEXT_RANGE.format(n=vocab_text)
    if arch == "Data2VecTextForTokenClassification":
        labels = np.array([[0, 1, 1, 0, 1], [1, 0, 1, -100, -100]])
        return labels, n_text, -100, TEXT_RANGE.format(n=n_text)
    if arch == "Data2VecTextForSequenceClassification":
        return np.array([1, 0]), n_text, -100, TEXT_RANGE.format(n=n_text)
    if arch == "Data2VecTextForMultipleChoice":  # one of 3 choices
        return np.array([2, 0]), 3, -100, TEXT_RANGE.format(n=3)
    if arch == "Data2VecAudioForCTC":
        labels = np.array([[1, 2, 3, 4], [5, 6, -100, -100]])
        return labels, vocab_audio, -100, rf"Label values must be < vocab_size \({vocab_audio}\), got {vocab_audio}"
    if arch == "Data2VecAudioForSequenceClassification":
        return np.array([1, 0]), n_audio, -100, CLASS_RANGE.format(n=n_audio)
    if arch == "Data2VecAudioForXVector":  # AM-softmax has no ignore index
        return np.array([1, 0]), n_audio, 2, rf"labels must be in \[0, {n_audio}\), got \[{n_audio}\]"
    if arch == "Data2VecVisionForImageClassification":
        return np.array([1, 0]), n_vision, -100, CLASS_RANGE.format(n=n_vision)
    if arch == "Data2VecVisionForSemanticSegmentation":
        labels = np.random.default_rng(0).integers(0, n_vision, size=(2, 32, 32))
        ignore = CONFIGS["vision"].semantic_loss_ignore_index
        return labels, n_vision, ignore, SEGMENTATION_RANGE.format(n=n_vision, ignore=ignore)
    return None


def _with(labels: np.ndarray, value) -> np.ndarray:
    out = labels.copy()
    out.reshape(-1)[0] = value
    return out


# --------------------------------------------------------------------------------- the table


@dataclass
class Bad:
    inputs: dict  # the offending call
    fixed: dict  # the same call with the problem fixed: must run
    error: type
    match: str  # what the message must say


def row_too_long(arch):
    if FAMILY[arch] != "text":
        return None
    ids = lambda n: _text_inputs(arch, batch=1, length=n)["input_ids"]  # noqa: E731
    return Bad(
        {"input_ids": ids(TEXT_LIMIT + 1)}, {"input_ids": ids(TEXT_LIMIT)}, ValueError,
        rf"{TEXT_LIMIT + 1} tokens.*limit is {TEXT_LIMIT} tokens.*max_position_embeddings",
    )


def row_token_id(arch):
    if FAMILY[arch] != "text":
        return None
    good = _text_inputs(arch)
    vocab = CONFIGS["text"].vocab_size
    bad = dict(good, input_ids=_with(good["input_ids"], vocab))
    fixed = dict(good, input_ids=_with(good["input_ids"], vocab - 1))
    return Bad(bad, fixed, ValueError, rf"input_ids must be in \[0, {vocab}\) \(vocab_size={vocab}\), got \[{vocab}\]")


def row_image_size(arch):
    if FAMILY[arch] != "vision":
        return None
    bad = _vision_inputs(size=(40, 32))
    return Bad(bad, dict(bad, interpolate_pos_encoding=True), ValueError,
               r"image size \(40x32\) doesn't match the model \(32x32\).*interpolate_pos_encoding=True")


def row_channels(arch):
    if FAMILY[arch] != "vision":
        return None
    return Bad(_vision_inputs(channels=4), _vision_inputs(channels=3), ValueError,
               r"4 channels but the model expects num_channels=3")


def row_audio_too_short(arch):
    if FAMILY[arch] != "audio":
        return None
    need = A.min_input_samples(CONFIGS["audio"])
    if arch == "Data2VecAudioForXVector":  # the TDNN needs more than one frame: its own minimum
        need = A.min_xvector_samples(CONFIGS["audio"])
        match = rf"at least 2 frames after the TDNN stack.*at least {need} \(unpadded\) samples"
        short = {"input_values": _audio_inputs()["input_values"][:, : need - 1]}
        ok = {"input_values": _audio_inputs()["input_values"][:, :need]}
        return Bad(short, ok, ValueError, match)
    x = _audio_inputs()["input_values"]
    return Bad({"input_values": x[:, : need - 1]}, {"input_values": x[:, :need]}, ValueError,
               rf"{need - 1} samples, fewer than the feature encoder's receptive field: at least {need} samples")


def row_empty_batch(arch):
    family = FAMILY[arch]
    if family == "text":
        good = _text_inputs(arch, batch=1)
        bad = {k: v[:0] for k, v in good.items()}
        return Bad(bad, good, ValueError, r"input_ids is an empty batch")
    if family == "audio":
        good = {"input_values": _audio_inputs()["input_values"][:1]}
        return Bad({"input_values": good["input_values"][:0]}, good, ValueError, r"input_values is an empty batch")
    good = _vision_inputs(batch=1)
    return Bad(_vision_inputs(batch=0), good, ValueError, r"pixel_values is an empty batch")


def row_attention_mask_shape(arch):
    family = FAMILY[arch]
    if family == "vision":
        return None
    good = _text_inputs(arch) if family == "text" else _audio_inputs()
    bad = dict(good, attention_mask=good["attention_mask"][..., :-1])
    if family == "audio":
        n = AUDIO_SAMPLES
        match = rf"attention_mask must have the shape of input_values \(2, {n}\), got \(2, {n - 1}\)"
    elif arch.endswith("MultipleChoice"):
        match = r"attention_mask must have shape \(2, 3, 5\) like the input ids, got \(2, 3, 4\)"
    else:
        match = r"attention_mask must have shape \(batch, 5\) or \(batch, 5, 5\).*got \(2, 4\)"
    return Bad(bad, good, ValueError, match)


def _label_inputs(arch, labels):
    base = {"text": _text_inputs, "audio": lambda a: _audio_inputs(), "vision": lambda a: _vision_inputs()}
    return dict(base[FAMILY[arch]](arch), labels=labels)


def row_label_range(arch):
    spec = _labels(arch)
    if spec is None:
        return None
    labels, bad_value, fix_value, match = spec
    return Bad(_label_inputs(arch, _with(labels, bad_value)), _label_inputs(arch, _with(labels, fix_value)),
               ValueError, match)


def row_label_dtype(arch):
    if arch == "Data2VecTextForQuestionAnswering":
        good = dict(_text_inputs(arch), start_positions=np.array([1, 2]), end_positions=np.array([3, 9]))
        bad = dict(good, start_positions=good["start_positions"].astype(np.float32))
        return Bad(bad, good, TypeError, r"start_positions must be integer token indices, got dtype .*float32")
    spec = _labels(arch)
    if spec is None:
        return None
    labels = spec[0]
    match = r"labels must be integer.*float32"
    return Bad(_label_inputs(arch, labels.astype(np.float32)), _label_inputs(arch, labels), TypeError, match)


def row_ctc_too_long(arch):
    if arch != "Data2VecAudioForCTC":
        return None
    # alternating ids: no repeats, so as many tokens as frames is still feasible
    labels = np.full((2, AUDIO_FRAMES), -100)
    labels[0] = np.arange(AUDIO_FRAMES) % 2 + 1
    labels[1, : AUDIO_KEPT_FRAMES + 1] = np.arange(AUDIO_KEPT_FRAMES + 1) % 2 + 1
    fixed = labels.copy()
    fixed[1, AUDIO_KEPT_FRAMES] = -100
    return Bad(
        _label_inputs(arch, labels), _label_inputs(arch, fixed), ValueError,
        rf"CTC labels of row 1 have {AUDIO_KEPT_FRAMES + 1} tokens but its audio gives only "
        rf"{AUDIO_KEPT_FRAMES} output frames.*ctc_zero_infinity",
    )


def row_masked_positions_shape(arch):
    if arch == "Data2VecVisionModel":
        good = dict(_vision_inputs(), bool_masked_pos=np.zeros((2, 16), bool))
        good["bool_masked_pos"][:, ::3] = True
        bad = dict(good, bool_masked_pos=good["bool_masked_pos"][:, :15])
        match = r"bool_masked_pos must have shape \(batch, num_patches\) = \(2, 16\), got \(2, 15\)"
        return Bad(bad, good, ValueError, match)
    if arch == "Data2VecAudioModel":  # the audio twin: SpecAugment's mask_time_indices
        spans = np.zeros((2, AUDIO_FRAMES), bool)
        spans[:, 2:4] = True
        good = dict(_audio_inputs(), mask_time_indices=spans)
        bad = dict(good, mask_time_indices=spans[:, :-1])
        n = AUDIO_FRAMES
        match = rf"mask_time_indices must have shape \(batch, frames\) = \(2, {n}\), got \(2, {n - 1}\)"
        return Bad(bad, good, ValueError, match)
    return None


ROWS = {
    "sequence-too-long": row_too_long,
    "token-id-out-of-vocab": row_token_id,
    "image-size-without-interpolation": row_image_size,
    "wrong-channel-count": row_channels,
    "audio-shorter-than-receptive-field": row_audio_too_short,
    "empty-batch": row_empty_batch,
    "attention-mask-shape": row_attention_mask_shape,
    "label-out-of-range": row_label_range,
    "ctc-labels-longer-than-frames": row_ctc_too_long,
    "masked-positions-shape": row_masked_positions_shape,
    "label-dtype": row_label_dtype,
}
TABLE = [(row, arch) for row, make in ROWS.items() for arch in FAMILY if make(arch) is not None]


def test_every_row_covers_a_class_of_every_family_it_names():
    """Rows apply wherever they make sense: empty batch everywhere, masks in text and audio,
    label rows in every head with class labels."""
    covered = {row: {arch for r, arch in TABLE if r == row} for row in ROWS}
    assert covered["empty-batch"] == set(FAMILY)
    assert covered["attention-mask-shape"] == set(ARCHS["text"]) | set(ARCHS["audio"])
    assert covered["sequence-too-long"] == covered["token-id-out-of-vocab"] == set(ARCHS["text"])
    assert covered["audio-shorter-than-receptive-field"] == set(ARCHS["audio"])
    heads = {a for a in FAMILY if not a.endswith("Model")} - {
        "Data2VecTextForQuestionAnswering", "Data2VecAudioForAudioFrameClassification"
    }
    assert covered["label-out-of-range"] == heads
    assert covered["label-dtype"] == heads | {"Data2VecTextForQuestionAnswering"}


@pytest.mark.parametrize("framework", ["torch", "tf"])
@pytest.mark.parametrize("row,arch", TABLE, ids=[f"{r}-{a.replace('Data2Vec', '')}" for r, a in TABLE])
def test_bad_input_table(row, arch, framework):
    bad = ROWS[row](arch)
    with pytest.raises(bad.error, match=bad.match) as info:
        _call(arch, framework, bad.inputs)
    # specific: the message fits no other row of this class
    message = str(info.value)
    for other, make in ROWS.items():
        other_bad = make(arch) if other != row else None
        assert other_bad is None or not re.search(other_bad.match, message), (other, message)
    # and the named problem was the only one: fixed, the call runs to finite outputs
    out = to_numpy_outputs(_call(arch, framework, bad.fixed))
    for key, value in out.items():
        for v in value if isinstance(value, list) else [value]:
            assert v.dtype.kind != "f" or np.isfinite(v).all(), f"{key} not finite once {row} is fixed"


# ---------------------------------------------------------------------------- all-padding row


def _all_padding_inputs(arch: str) -> dict:
    """Row 1 of the batch keeps nothing (attention_mask all zeros), with labels where the head has them."""
    family = FAMILY[arch]
    if family == "text":
        inputs = _text_inputs(arch)
        inputs["attention_mask"][1] = 0
        inputs["input_ids"][1] = CONFIGS["text"].pad_token_id
        extra = {
            "Data2VecTextForCausalLM": {"labels": np.array([[5, 6, 7, 8, 9], [-100] * 5])},
            "Data2VecTextForMaskedLM": {"labels": np.array([[5, -100, 7, -100, 9], [-100] * 5])},
            "Data2VecTextForSequenceClassification": {"labels": np.array([1, 0])},
            "Data2VecTextForMultipleChoice": {"labels": np.array([2, 0])},
            "Data2VecTextForTokenClassification": {"labels": np.array([[0, 1, 1, 0, 1], [-100] * 5])},
            "Data2VecTextForQuestionAnswering": {"start_positions": np.array([1, 0]),
                                                 "end_positions": np.array([3, 0])},
        }
        return dict(inputs, **extra.get(arch, {}))
    inputs = _audio_inputs()
    inputs["attention_mask"][1] = 0
    inputs["input_values"][1] = 0.0
    extra = {
        "Data2VecAudioForCTC": {"labels": np.array([[1, 2, 3, 4], [-100] * 4])},
        "Data2VecAudioForSequenceClassification": {"labels": np.array([1, 0])},
        "Data2VecAudioForXVector": {"labels": np.array([1, 0])},
        "Data2VecAudioForAudioFrameClassification": {
            "labels": np.random.default_rng(0).random((2, AUDIO_FRAMES, CONFIGS["audio"].num_labels)).astype(np.float32)
        },
    }
    return dict(inputs, **extra.get(arch, {}))


def _rows(outputs: dict, rows) -> dict:
    """Per-row slices of every batched output (losses mix rows and are left out)."""
    out = {}
    for key, value in outputs.items():
        if key == "loss":
            continue
        out[key] = [v[rows] for v in value] if isinstance(value, list) else value[rows]
    return out


@pytest.mark.parametrize("arch", ARCHS["text"] + ARCHS["audio"])
def test_all_padding_row_is_finite_in_both_frameworks_and_matches_hf(arch):
    """Text: HF's outputs are finite there and d2v equals them, padded row included. Audio: HF
    turns the empty row's negative frame count into a negative index, so it counts all frames
    but the last as real (its CTC loss raises); d2v gives that row no frames and finite zeros
    where it pools. The rows with audio match HF."""
    config = CONFIGS[FAMILY[arch]]
    inputs = _all_padding_inputs(arch)
    arrays = _model(arch, "torch").state_arrays()
    pt = to_numpy_outputs(_call(arch, "torch", inputs))
    tf = to_numpy_outputs(_call(arch, "tf", inputs))
    for name, out in (("torch", pt), ("tf", tf)):
        for key, value in out.items():
            for v in value if isinstance(value, list) else [value]:
                assert np.isfinite(v).all(), f"{name} {key} has NaN/inf with an all-padding row"
    assert max(max_abs_diff(pt, tf).values()) <= 1e-5

    case = Case("bad-input", arch, config, lambda rng: inputs)
    hf = hf_model(case, arrays)
    hf_inputs = dict(inputs)
    if arch == "Data2VecAudioForCTC":
        hf_inputs.pop("labels")  # HF's CTC loss raises on the negative frame count
    with torch.no_grad():
        ref = to_numpy_outputs(hf(**torch_inputs(hf_inputs), return_dict=True))
    if FAMILY[arch] == "text":
        assert max(max_abs_diff(ref, pt).values()) <= 1e-5
    else:
        real = slice(0, 1)
        assert max(max_abs_diff(_rows(ref, real), _rows(pt, real)).values()) <= 1e-5
        if arch == "Data2VecAudioForSequenceClassification":
            # the empty row pools to zeros: its logits are the classifier's bias
            bias = arrays["classifier.bias"]
            assert np.abs(pt["logits"][1] - bias).max() <= 1e-6
