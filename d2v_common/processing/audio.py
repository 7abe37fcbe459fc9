"""Waveforms -> ``input_values`` for the audio models (the Wav2Vec2 feature extractor's behaviour).

Each utterance is optionally truncated, padded to a common length, and normalised to zero mean
and unit variance. The statistics cover the real samples only when an attention mask is
returned for padded input; without a mask the padded samples are included (HF's behaviour,
which the models trained without attention masks expect).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from d2v_common.processing.base import (
    PreprocessorConfigFile,
    BatchFeature,
    as_numpy,
    check_return_tensors,
    is_number,
    stack_or_list,
)

# Config types with the same semantics as this class; anything else needs another extractor.
COMPATIBLE_TYPES = ("Wav2Vec2FeatureExtractor",)
NORM_EPS = 1e-7


def padding_strategy(padding: Any, max_length: int | None) -> str:
    """'none', 'longest' or 'max_length', from HF's padding argument values."""
    if padding is False or padding is None or padding == "do_not_pad":
        return "none"
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return "max_length"
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}")


def round_up(length: int, multiple: int | None) -> int:
    if multiple is None:
        return length
    return -(-length // multiple) * multiple


def _check_length(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class AudioFeatureExtractor(PreprocessorConfigFile):
    """Raw mono waveforms -> ``input_values`` (+ ``attention_mask``), as HF's Wav2Vec2FeatureExtractor."""

    model_input_names = ("input_values", "attention_mask")
    COMPATIBLE_TYPES = COMPATIBLE_TYPES

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        do_normalize: bool = True,
        padding_side: str = "right",
        **extra: Any,
    ):
        if feature_size != 1:
            raise ValueError(f"only mono waveforms (feature_size=1) are supported, got feature_size={feature_size}")
        if not is_number(sampling_rate) or sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be a positive number, got {sampling_rate!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.feature_size = 1
        self.sampling_rate = sampling_rate
        self.padding_value = float(padding_value)
        self.return_attention_mask = bool(return_attention_mask)
        self.do_normalize = bool(do_normalize)
        self.padding_side = padding_side
        self.extra = extra  # unknown config keys, written back by save_pretrained

    # ------------------------------------------------------------------ config files
    def to_dict(self) -> dict:
        return {
            **self.extra,
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "feature_size": self.feature_size,
            "sampling_rate": self.sampling_rate,
            "padding_value": self.padding_value,
            "return_attention_mask": self.return_attention_mask,
            "do_normalize": self.do_normalize,
            "padding_side": self.padding_side,
        }

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _waveforms(raw_speech: Any) -> list[np.ndarray]:
        """The utterances of one waveform or a batch, as checked float32 1-D arrays."""
        if isinstance(raw_speech, (list, tuple)):
            if len(raw_speech) == 0:
                raise ValueError("raw_speech is empty")
            if all(is_number(x) for x in raw_speech):
                items, batched = [raw_speech], False
            else:
                items, batched = list(raw_speech), True
        else:
            array = as_numpy(raw_speech)
            if array.ndim == 1:
                items, batched = [array], False
            elif array.ndim == 2:
                items, batched = list(array), True
            else:
                raise ValueError(
                    f"raw_speech must be one mono waveform (T,) or a batch (B, T), got shape {array.shape}; "
                    "mix multi-channel audio down to mono first"
                )
        out = []
        for i, item in enumerate(items):
            array = as_numpy(item)
            where = f"utterance {i}" if batched else "the waveform"
            if array.ndim != 1:
                raise ValueError(f"{where} must be 1-D (mono samples), got shape {array.shape}")
            if array.size == 0:
                raise ValueError(f"{where} is empty")
            if array.dtype.kind not in "fiu":
                raise TypeError(f"{where} must hold real numbers, got dtype {array.dtype}")
            array = array.astype(np.float32)
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{where} contains NaN or infinite samples")
            out.append(array)
        return out

    def _pad(self, x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        mask = np.ones(len(x), dtype=np.int32)
        extra = length - len(x)
        if extra > 0:
            pad = (0, extra) if self.padding_side == "right" else (extra, 0)
            x = np.pad(x, pad, constant_values=np.float32(self.padding_value))
            mask = np.pad(mask, pad)
        return x, mask

    def normalize(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Zero mean, unit variance over the masked-in samples (all of them without a mask)."""
        real = x if mask is None else x[mask.astype(bool)]
        out = (x - real.mean()) / np.sqrt(real.var() + NORM_EPS)
        if mask is not None:
            out[~mask.astype(bool)] = self.padding_value
        return out

    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """Featurise one waveform (T,) or a batch (list of waveforms, or an array (B, T)).

        ``input_values`` is float32 (B, T) when all utterances end up the same length (always
        with padding), else a list of 1-D arrays; ``attention_mask`` is int32 with 1 on samples.
        """
        check_return_tensors(return_tensors)
        if sampling_rate is None:
            warnings.warn(
                f"pass sampling_rate to {type(self).__name__} so that audio at the wrong rate is caught "
                f"(it expects {self.sampling_rate} Hz)",
                stacklevel=2,
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"the audio is sampled at {sampling_rate} Hz but this feature extractor (and its model) expects "
                f"{self.sampling_rate} Hz: resample the audio first"
            )
        _check_length("max_length", max_length)
        _check_length("pad_to_multiple_of", pad_to_multiple_of)
        strategy = padding_strategy(padding, max_length)
        with_mask = self.return_attention_mask if return_attention_mask is None else bool(return_attention_mask)

        waves = self._waveforms(raw_speech)
        if truncation:
            if max_length is None:
                raise ValueError("truncation=True needs max_length")
            waves = [w[: round_up(max_length, pad_to_multiple_of)] for w in waves]
        if strategy == "none":
            target = 0
        else:
            target = round_up(max(len(w) for w in waves) if strategy == "longest" else max_length, pad_to_multiple_of)
        padded = [self._pad(w, target) for w in waves]
        values = [v for v, _ in padded]
        masks = [m for _, m in padded]
        if self.do_normalize:
            # The mask restricts the statistics only where padding happened and the mask is returned.
            use_mask = strategy != "none" and with_mask
            values = [self.normalize(v, m if use_mask else None) for v, m in padded]

        out = BatchFeature(input_values=stack_or_list(values, "input_values", return_tensors))
        if with_mask:
            out["attention_mask"] = stack_or_list(masks, "attention_mask", return_tensors)
        return out.convert_to_tensors(return_tensors)


__all__ = ["AudioFeatureExtractor"]
