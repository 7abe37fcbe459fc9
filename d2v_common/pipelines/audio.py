"""Audio for the pipelines: waveforms from arrays, dicts and files; resampling; chunk planning.

Long audio goes through a model in overlapping chunks (HF's ``chunk_length_s`` /
``stride_length_s`` of its Wav2Vec2 speech-recognition pipeline): each chunk carries
``stride`` samples of context on both sides, and the frames those samples produce are dropped
before the per-chunk CTC ids are joined. ``ChunkPlan`` does that arithmetic in samples and
frames; the pipeline runs one chunk at a time, so memory is bounded by one chunk.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from d2v_common.processing.base import as_numpy, is_number

# ------------------------------------------------------------------------------ waveforms


def as_waveform(value: Any, what: str = "the audio") -> np.ndarray:
    """One mono waveform (numpy, torch or TF, 1-D, real numbers) as float32."""
    try:
        array = as_numpy(value)
    except Exception as err:  # noqa: BLE001 - anything that is no array-like
        raise TypeError(f"{what} must be a 1-D waveform (numpy array), a file path or a dict; "
                        f"got {type(value).__name__}") from err
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a 1-D waveform of real numbers (numpy array), a file path or a dict "
                        f"{{'raw': waveform, 'sampling_rate': rate}}; got {type(value).__name__} of dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{what} must be one mono waveform of shape (samples,), got shape {array.shape}: "
                         "pass several waveforms as a list, and mix multi-channel audio down to mono first")
    if array.size == 0:
        raise ValueError(f"{what} is empty")
    return array.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------ resampling
def installed(package: str) -> bool:
    """Whether an optional package (soundfile, a resampler) can be imported."""
    return importlib.util.find_spec(package) is not None


def _scipy_resample(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    from scipy.signal import resample_poly

    common = math.gcd(int(rate_in), int(rate_out))
    return resample_poly(waveform, int(rate_out) // common, int(rate_in) // common).astype(np.float32)


# name -> (module it needs, function(waveform, rate_in, rate_out)); the first importable one is used
RESAMPLERS: dict[str, tuple[str, Callable[[np.ndarray, int, int], np.ndarray]]] = {
    "scipy": ("scipy.signal", _scipy_resample),
}


def resample(waveform: np.ndarray, rate_in: Any, rate_out: int) -> np.ndarray:
    """``waveform`` at ``rate_out`` Hz (unchanged when the rates agree).

    Raises:
        ValueError: the rates differ and no resampler of ``RESAMPLERS`` is installed.
    """
    if not is_number(rate_in) or rate_in <= 0 or int(rate_in) != rate_in:
        raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {rate_in!r}")
    if int(rate_in) == rate_out:
        return waveform
    for module, function in RESAMPLERS.values():
        if installed(module.split(".")[0]):
            return function(waveform, int(rate_in), rate_out)
    raise ValueError(f"the audio is sampled at {rate_in} Hz but the model expects {rate_out} Hz and no resampler is "
                     f"installed: resample it first, or pip install {' or '.join(RESAMPLERS)} so the pipeline can")


# ------------------------------------------------------------------------------ files
_WAVE_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}  # PCM width (bytes) -> full scale


def _read_with_wave(source: Any) -> tuple[np.ndarray, int]:
    """Integer PCM WAV with the standard library (what soundfile would give: float in [-1, 1))."""
    with wave.open(source, "rb") as f:
        width, channels, rate, n = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
        raw = f.readframes(n)
    if width == 1:  # 8-bit WAV is unsigned
        samples = np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0
    elif width == 3:  # 24-bit: little-endian triplets, sign-extended into int32
        triplets = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        samples = (triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)).astype(np.float32)
        samples[samples >= 2**23] -= 2**24
    else:
        samples = np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]).astype(np.float32)
    return (samples / _WAVE_SCALE[width]).reshape(-1, channels), rate


def read_audio(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """A file (path or its bytes) as a mono float32 waveform and its sampling rate.

    soundfile reads every format libsndfile knows (WAV, FLAC, OGG, ...); without it, integer
    PCM WAV is read with the standard library. Channels are averaged (mono), as HF's ffmpeg read.
    """
    name = "the audio bytes" if isinstance(source, bytes) else repr(os.fspath(source))
    if not isinstance(source, bytes) and not os.path.isfile(source):
        raise FileNotFoundError(f"no audio file {name}")
    opened = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
    if installed("soundfile"):
        import soundfile

        try:
            data, rate = soundfile.read(opened, dtype="float32", always_2d=True)
        except Exception as err:  # noqa: BLE001 - libsndfile's own error types
            raise ValueError(f"cannot read {name} as audio: {err}") from err
    else:
        try:
            data, rate = _read_with_wave(opened)
        except (wave.Error, EOFError, KeyError) as err:
            raise ValueError(f"cannot read {name}: without soundfile only integer PCM WAV files are read "
                             f"({err}); pip install soundfile for other formats") from err
    if data.shape[0] == 0:
        raise ValueError(f"{name} holds no samples")
    return data.mean(axis=1, dtype=np.float32), int(rate)


def load_waveform(item: Any, sampling_rate: int) -> np.ndarray:
    """One pipeline input as a float32 waveform at ``sampling_rate``: an array (taken to be at that
    rate, as HF does), a file path or its bytes, or HF's dict ``{"raw" | "array": waveform,
    "sampling_rate": rate}``; other rates are resampled (``resample``)."""
    if isinstance(item, (str, os.PathLike, bytes)):
        waveform, rate = read_audio(item)
        return resample(waveform, rate, sampling_rate)
    if isinstance(item, dict):
        keys = set(item) - {"path"}  # datasets' rows carry the file name as well
        array_key = "raw" if "raw" in item else "array"
        if "sampling_rate" not in item or array_key not in item or keys - {array_key, "sampling_rate"}:
            raise ValueError("an audio dict needs exactly the keys 'raw' (or 'array': the waveform) and "
                             f"'sampling_rate' (in Hz); got keys {sorted(item)}")
        return resample(as_waveform(item[array_key]), item["sampling_rate"], sampling_rate)
    return as_waveform(item)


# ------------------------------------------------------------------------------ chunks
def _seconds(name: str, value: Any) -> float:
    if not is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Chunk:
    """Samples ``start:end`` of the audio; the first ``left`` and last ``right`` of them are context only."""

    start: int
    end: int
    left: int
    right: int


@dataclass(frozen=True)
class ChunkPlan:
    """Chunk and stride lengths in samples, multiples of the model's samples per frame.

    Args:
        chunk: samples per chunk.
        stride_left, stride_right: context samples on each side (dropped from the result).
        samples_per_frame: the model's ``inputs_to_logits_ratio``.
    """

    chunk: int
    stride_left: int
    stride_right: int
    samples_per_frame: int

    @classmethod
    def from_seconds(cls, chunk_length_s: Any, stride_length_s: Any, sampling_rate: int,
                     samples_per_frame: int) -> "ChunkPlan":
        """HF's arithmetic: seconds to samples, rounded to whole frames; the stride defaults to a
        sixth of the chunk on each side and may be a (left, right) pair.

        Raises:
            ValueError: a negative or non-numeric length, a chunk shorter than one frame, or a
                chunk no longer than its two strides (it would not advance).
        """
        chunk_s = _seconds("chunk_length_s", chunk_length_s)
        if stride_length_s is None:
            stride_length_s = chunk_s / 6
        pair = stride_length_s if isinstance(stride_length_s, (list, tuple)) else (stride_length_s,) * 2
        if len(pair) != 2:
            raise ValueError(f"stride_length_s must be a number or a (left, right) pair, got {stride_length_s!r}")
        left_s, right_s = (_seconds("stride_length_s", s) for s in pair)

        def samples(seconds: float) -> int:
            return int(round(seconds * sampling_rate / samples_per_frame) * samples_per_frame)

        plan = cls(samples(chunk_s), samples(left_s), samples(right_s), samples_per_frame)
        if plan.chunk <= 0:
            raise ValueError(f"chunk_length_s={chunk_length_s} is shorter than one model frame "
                             f"({samples_per_frame / sampling_rate:g} s): use a longer chunk")
        if plan.chunk <= plan.stride_left + plan.stride_right:
            raise ValueError(
                f"chunk_length_s={chunk_length_s} must be longer than the strides on both sides "
                f"(stride_length_s={stride_length_s}, i.e. {(plan.stride_left + plan.stride_right) / sampling_rate:g} s "
                "in all), or the chunks would not advance: lower stride_length_s (default: chunk_length_s / 6) "
                "or raise chunk_length_s")
        return plan

    @property
    def step(self) -> int:
        return self.chunk - self.stride_left - self.stride_right

    def chunks(self, num_samples: int) -> Iterator[Chunk]:
        """The chunks covering ``num_samples`` samples, in order: no left context on the first,
        no right context on the last (HF's chunk_iter)."""
        for start in range(0, num_samples, self.step):
            end = min(start + self.chunk, num_samples)
            last = start + self.chunk >= num_samples
            left = 0 if start == 0 else self.stride_left
            if end - start > left:
                yield Chunk(start, end, left, 0 if last else self.stride_right)
            if last:
                return

    def kept_frames(self, chunk: Chunk) -> slice:
        """The frames of ``chunk``'s output that belong to it (its context frames dropped),
        rounded as HF rescales strides to frames."""
        samples = chunk.end - chunk.start
        frames = int(round(samples * (1 / self.samples_per_frame)))
        left = int(round(chunk.left / samples * frames))
        right = int(round(chunk.right / samples * frames))
        return slice(left, frames - right)


__all__ = ["Chunk", "ChunkPlan", "RESAMPLERS", "as_waveform", "load_waveform", "read_audio", "resample"]
