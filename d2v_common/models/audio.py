"""Framework-neutral pieces of the audio family: length formulas, input checks, SpecAugment masks.

The length formulas use only ``-``, ``//`` and ``+``, so the same function serves Python ints,
numpy arrays, torch tensors and TensorFlow tensors (all four floor-divide).
"""

from __future__ import annotations

import warnings

import numpy as np

from d2v_common.configs import Data2VecAudioConfig
from d2v_common.models.input_types import check_main_input
from d2v_common.models.losses import check_label_range


# ------------------------------------------------------------------------------ lengths


def _conv_length(length, kernel: int, stride: int):
    return (length - kernel) // stride + 1


def feature_lengths(config: Data2VecAudioConfig, lengths, add_adapter: bool | None = None):
    """Frames out of the feature encoder (and the adapter, if ``add_adapter``) for ``lengths`` samples.

    The adapter term follows HF: each adapter layer counts as a kernel-1 conv with the adapter
    stride (equal to the real conv for the default kernel 3 with padding 1).
    """
    add_adapter = config.add_adapter if add_adapter is None else add_adapter
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = _conv_length(lengths, kernel, stride)
    if add_adapter:
        for _ in range(config.num_adapter_layers):
            lengths = _conv_length(lengths, 1, config.adapter_stride)
    return lengths


def adapter_conv_length(config: Data2VecAudioConfig, frames: int) -> int:
    """Frames out of one real adapter conv (kernel ``adapter_kernel_size``, padding 1)."""
    return (frames + 2 - config.adapter_kernel_size) // config.adapter_stride + 1


def min_input_samples(config: Data2VecAudioConfig) -> int:
    """The feature encoder's receptive field: the fewest samples that give one frame."""
    n = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        n = (n - 1) * stride + kernel
    return n


def tdnn_lengths(config: Data2VecAudioConfig, frames):
    """HF's TDNN output-length formula (it ignores dilation; the heads mirror it)."""
    for kernel in config.tdnn_kernel:
        frames = _conv_length(frames, kernel, 1)
    return frames


def tdnn_frames(config: Data2VecAudioConfig, frames: int) -> int:
    """Frames the dilated TDNN stack really produces from ``frames`` input frames."""
    for kernel, dilation in zip(config.tdnn_kernel, config.tdnn_dilation):
        frames = frames - (kernel - 1) * dilation
    return frames


def min_xvector_samples(config: Data2VecAudioConfig) -> int:
    """Fewest samples for which statistics pooling sees two TDNN frames (the std needs two)."""
    need = 2 + sum((k - 1) * d for k, d in zip(config.tdnn_kernel, config.tdnn_dilation))
    n = need
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride)):
        n = (n - 1) * stride + kernel
    return n


# --------------------------------------------------------------------------- input checks


def check_input_values(config: Data2VecAudioConfig, shape: tuple, dtype: str) -> int:
    """Validate a (batch, samples) waveform batch; returns the encoder's frame count."""
    check_main_input("input_values", shape, dtype, ("batch", "samples"))
    batch, samples = shape
    need = min_input_samples(config)
    if samples is not None and samples < need:
        raise ValueError(
            f"input_values has {samples} samples, fewer than the feature encoder's receptive field: "
            f"at least {need} samples are needed for one frame"
        )
    # no int(): a symbolic length (torch.export, torch.compile) must stay symbolic
    return None if samples is None else feature_lengths(config, samples, add_adapter=False)


def check_attention_mask_shape(mask_shape: tuple, input_shape: tuple) -> None:
    """The sample-level mask has the waveform batch's shape (unknown sizes pass)."""
    ok = len(mask_shape) == len(input_shape) == 2 and all(
        m is None or i is None or m == i for m, i in zip(mask_shape, input_shape)
    )
    if not ok:
        raise ValueError(
            f"attention_mask must have the shape of input_values {tuple(input_shape)}, got {tuple(mask_shape)}"
        )


def check_attention_mask(config: Data2VecAudioConfig, mask: np.ndarray, input_shape: tuple) -> None:
    """Validate a sample-level attention mask (numpy): shape, and every row long enough.

    A row that keeps no sample at all is an all-padding row (a filler in a batch): it gets no
    frames and finite outputs. A row with some samples but fewer than the receptive field is
    an error, since none of its audio would reach the model.
    """
    check_attention_mask_shape(tuple(mask.shape), tuple(input_shape))
    lengths = mask.astype(np.int64).sum(-1)
    need = min_input_samples(config)
    short = np.nonzero((lengths > 0) & (lengths < need))[0]
    if short.size:
        raise ValueError(
            f"attention_mask keeps only {lengths[short].tolist()} samples in batch rows {short.tolist()}; "
            f"each row needs at least {need} (the feature encoder's receptive field), or none for a padding row"
        )


def check_mask_time_indices(shape: tuple, expected: tuple, has_embed: bool) -> None:
    if not has_embed:
        raise ValueError(
            "mask_time_indices needs the learned mask embedding, which exists only when "
            "mask_time_prob > 0 or mask_feature_prob > 0 in the config"
        )
    if tuple(shape) != tuple(expected):
        raise ValueError(f"mask_time_indices must have shape (batch, frames) = {tuple(expected)}, got {tuple(shape)}")


def check_xvector_frames(config: Data2VecAudioConfig, frames: int | None, lengths: np.ndarray | None = None) -> None:
    """Statistics pooling needs two TDNN frames per row (the std of one frame is undefined).

    ``lengths``: encoder frames per row; rows with none (all padding) are exempt, they pool to zeros.
    """
    if frames is None:
        return
    real = tdnn_frames(config, frames)
    if lengths is not None:
        lengths = np.asarray(lengths)
        lengths = lengths[lengths > 0]
        if lengths.size == 0:
            return
    usable = np.array([real]) if lengths is None else np.minimum(tdnn_lengths(config, lengths), real)
    if (usable < 2).any():
        raise ValueError(
            f"XVector statistics pooling needs at least 2 frames after the TDNN stack, got {usable.min()}: "
            f"give at least {min_xvector_samples(config)} (unpadded) samples"
        )


def check_sequence_labels(labels: np.ndarray, batch: int, num_labels: int) -> None:
    if labels.reshape(-1).shape[0] != batch:
        raise ValueError(f"labels must hold one class per batch row ({batch}), got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class ids, got {labels.dtype}")
    check_label_range("labels", labels, num_labels)


def check_xvector_labels(labels: np.ndarray, batch: int, num_labels: int) -> None:
    if labels.reshape(-1).shape[0] != batch:
        raise ValueError(f"labels must hold one speaker id per batch row ({batch}), got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class ids, got {labels.dtype}")
    check_label_range("labels", labels, num_labels, ignore_index=None)  # AM-softmax has no ignore index


def check_frame_labels(labels_shape: tuple, batch: int, frames: int, num_labels: int) -> None:
    """Frame labels are (batch, frames, num_labels) scores; the loss takes each frame's argmax."""
    size = int(np.prod(labels_shape)) if None not in labels_shape else None
    if size is not None and size != batch * frames * num_labels:
        raise ValueError(
            f"labels must have shape (batch, frames, num_labels) = ({batch}, {frames}, {num_labels}) "
            f"(one score per class per output frame), got {tuple(labels_shape)}"
        )


def check_ctc_labels(config: Data2VecAudioConfig, labels: np.ndarray, input_lengths: np.ndarray) -> None:
    """CTC labels: ids in [0, vocab_size) other than the blank, -100 (any negative) as padding,
    and no row longer than its output frames unless ``ctc_zero_infinity`` turns that into 0."""
    if labels.ndim != 2 or labels.shape[0] != input_lengths.shape[0]:
        raise ValueError(
            f"CTC labels must be 2-D (batch={input_lengths.shape[0]}, max_label_length), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.dtype.kind not in "iu":
        raise TypeError(f"CTC labels must be integer token ids, got {labels.dtype}")
    if labels.size and labels.max() >= config.vocab_size:
        raise ValueError(ctc_vocab_message(config, labels))
    blank = config.pad_token_id
    if blank is not None and (labels == blank).any():
        raise ValueError(
            f"CTC labels contain the blank id pad_token_id={blank}; pad labels with -100 instead"
        )
    target_lengths = (labels >= 0).sum(-1)
    if not config.ctc_zero_infinity:
        long_rows = np.nonzero(target_lengths > input_lengths)[0]
        if long_rows.size:
            i = int(long_rows[0])
            raise ValueError(
                f"CTC labels of row {i} have {int(target_lengths[i])} tokens but its audio gives only "
                f"{int(input_lengths[i])} output frames; use longer audio or set ctc_zero_infinity=True"
            )


def ctc_blank(config: Data2VecAudioConfig) -> int:
    if config.pad_token_id is None or not 0 <= config.pad_token_id < config.vocab_size:
        raise ValueError(
            f"CTC uses pad_token_id as the blank; it must be in [0, vocab_size={config.vocab_size}), "
            f"got {config.pad_token_id}"
        )
    return config.pad_token_id


# ------------------------------------------------------------------------------- SpecAugment


def compute_mask_indices(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    lengths=None,
    min_masks: int = 0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Random spans to mask, with the semantics of HF's SpecAugment helper (not its RNG draws).

    Each row of ``lengths`` valid positions (default: all ``shape[1]``) gets
    ``max(int(mask_prob * length / mask_length + eps), min_masks)`` spans of ``mask_length``
    (``eps`` one uniform draw per call, for probabilistic rounding), capped so that they fit
    the axis and the row, with distinct start positions inside the row. When other rows get
    spans and this one cannot, its last axis position is masked instead (HF pads its index
    list that way). Returns a (batch, length) bool array.
    """
    rng = np.random.default_rng() if rng is None else rng
    batch, size = int(shape[0]), int(shape[1])
    if mask_length < 1:
        raise ValueError(f"mask length must be at least 1, got {mask_length}")
    if mask_length > size:
        raise ValueError(
            f"mask length ({mask_length}) is longer than the axis being masked ({size} positions); "
            "lower mask_time_length / mask_feature_length or give longer inputs"
        )
    eps = float(rng.random())

    def num_spans(length: int) -> int:
        n = max(int(mask_prob * length / mask_length + eps), min_masks)
        if n * mask_length > size:
            n = size // mask_length
        return max(min(n, length - mask_length + 1), 0)

    lengths = [size] * batch if lengths is None else [int(v) for v in np.asarray(lengths).reshape(-1)]
    mask = np.zeros((batch, size), dtype=bool)
    if num_spans(size) == 0:
        return mask
    for row, length in enumerate(lengths):
        n = num_spans(length)
        if n == 0:
            mask[row, size - 1] = True
            continue
        starts = rng.choice(length - mask_length + 1, n, replace=False)
        for start in starts:
            mask[row, start : start + mask_length] = True
    return mask


def random_time_mask(config: Data2VecAudioConfig, batch: int, frames: int, frame_lengths, rng) -> np.ndarray:
    """Training-time SpecAugment mask over frames, (batch, frames) bool."""
    return compute_mask_indices(
        (batch, frames), config.mask_time_prob, config.mask_time_length, frame_lengths, config.mask_time_min_masks, rng
    )


def random_feature_mask(config: Data2VecAudioConfig, batch: int, rng) -> np.ndarray:
    """Training-time SpecAugment mask over hidden channels, (batch, hidden_size) bool."""
    return compute_mask_indices(
        (batch, config.hidden_size), config.mask_feature_prob, config.mask_feature_length, None,
        config.mask_feature_min_masks, rng,
    )


def spec_augment_enabled(config: Data2VecAudioConfig) -> bool:
    """HF reads an optional ``apply_spec_augment`` config key (default True)."""
    return bool(getattr(config, "apply_spec_augment", True))


def warn_freeze_feature_extractor() -> None:
    """HF's old name for ``freeze_feature_encoder`` still works, with a FutureWarning."""
    warnings.warn("freeze_feature_extractor is deprecated; use freeze_feature_encoder", FutureWarning, stacklevel=3)


def ctc_vocab_message(config: Data2VecAudioConfig, labels) -> str:
    """CTC labels past the vocabulary (``labels``: all of them, or only the offending ones)."""
    return f"Label values must be < vocab_size ({config.vocab_size}), got {int(np.max(labels))}"


def check_ctc_label_range(config: Data2VecAudioConfig, labels: np.ndarray | None) -> None:
    """CTC labels index the vocabulary (checked when the values are known)."""
    if labels is not None and np.size(labels) and int(np.max(labels)) >= config.vocab_size:
        raise ValueError(ctc_vocab_message(config, labels))


def check_ctc_frames(config: Data2VecAudioConfig, longest: int, frames: int) -> None:
    """HF's length formula must not promise more frames than the model produced."""
    if longest > frames:
        raise ValueError(
            f"the length formula gives {longest} output frames but the model produced {frames} "
            f"(adapter_kernel_size={config.adapter_kernel_size} with padding 1 does not fit HF's adapter "
            "length formula)"
        )
