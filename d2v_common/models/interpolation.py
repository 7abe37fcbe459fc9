"""Resampling as matrices, so both frameworks resize exactly like ``torch.nn.functional``.

A 2-D resize of a map ``x`` (H, W) is ``Mh @ x @ Mw.T``. The matrices reproduce PyTorch's
``interpolate`` (bilinear / bicubic with ``align_corners=False`` and an explicit output size)
and ``adaptive_avg_pool2d``; TensorFlow's own resize kernels differ from them (bicubic uses
another coefficient, adaptive pooling does not exist), which is why the Keras models use these.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _source_index(dst: np.ndarray, in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    # float32 arithmetic, as PyTorch's CPU kernels do for float inputs.
    f = np.float32
    if align_corners:
        scale = f(in_size - 1) / f(out_size - 1) if out_size > 1 else f(0.0)
        return (dst.astype(f) * scale).astype(np.float64)
    scale = f(in_size) / f(out_size)
    return (scale * (dst.astype(f) + f(0.5)) - f(0.5)).astype(np.float64)


@functools.lru_cache(maxsize=256)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's linear interpolation along one axis."""
    dst = np.arange(out_size, dtype=np.float64)
    src = _source_index(dst, in_size, out_size, align_corners)
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = (src.astype(np.float32) - i0.astype(np.float32)).astype(np.float64)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m.astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights for the 4 taps around a fractional position ``t``."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def bicubic_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's bicubic interpolation (A = -0.75, edges clamped)."""
    dst = np.arange(out_size, dtype=np.float64)
    src = _source_index(dst, in_size, out_size, align_corners)
    i = np.floor(src).astype(np.int64)
    w = _cubic_weights((src.astype(np.float32) - i.astype(np.float32)).astype(np.float64))
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    for k in range(4):
        np.add.at(m, (rows, np.clip(i - 1 + k, 0, in_size - 1)), w[:, k])
    return m.astype(np.float32)


@functools.lru_cache(maxsize=256)
def adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's adaptive average pooling along one axis."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for o in range(out_size):
        start = (o * in_size) // out_size
        end = math.ceil((o + 1) * in_size / out_size)
        m[o, start:end] = 1.0 / (end - start)
    return m.astype(np.float32)


def resize_matrices(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(Mh, Mw) for a 2-D resize; ``mode`` is bilinear, bicubic or adaptive_avg."""
    make = {"bilinear": bilinear_matrix, "bicubic": bicubic_matrix, "adaptive_avg": adaptive_avg_pool_matrix}[mode]
    return make(int(in_hw[0]), int(out_hw[0])), make(int(in_hw[1]), int(out_hw[1]))
