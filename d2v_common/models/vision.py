"""Framework-neutral pieces of the vision family: index tables and input checks."""

from __future__ import annotations

import functools

import numpy as np

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.models.input_types import PIXEL_AXES, check_main_input
from d2v_common.models.losses import check_classification_labels, check_label_range
from d2v_common.models.checks import TensorInfo, is_integer_dtype


@functools.lru_cache(maxsize=32)
def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """(N+1, N+1) row of the relative-bias table for every (query, key) pair of a patch grid.

    Patch pairs index their (dy, dx) offset; the last three rows serve CLS->patch,
    patch->CLS and CLS->CLS.
    """
    gh, gw = grid
    coords = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    rows = (2 * gh - 1) * (2 * gw - 1) + 3
    n = gh * gw
    index = np.zeros((n + 1, n + 1), dtype=np.int64)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = rows - 3
    index[:, 0] = rows - 2
    index[0, 0] = rows - 1
    index.setflags(write=False)
    return index


def stochastic_depth_rates(config: Data2VecVisionConfig) -> list[float]:
    """Drop-path rate per layer, rising linearly from 0 to ``drop_path_rate``."""
    n = config.num_hidden_layers
    return [float(x) for x in np.linspace(0.0, config.drop_path_rate, n, dtype=np.float32)]


def check_pixel_values(
    config: Data2VecVisionConfig, shape: tuple, dtype: str, interpolate_pos_encoding: bool
) -> tuple[int, int]:
    """Validate an NCHW batch; returns its patch grid."""
    check_main_input("pixel_values", shape, dtype, PIXEL_AXES)
    batch, channels, height, width = shape
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects num_channels={config.num_channels} "
            "(pixel_values must be NCHW)"
        )
    ph, pw = config.patch_size_hw
    if height < ph or width < pw:
        raise ValueError(f"image {height}x{width} is smaller than one patch ({ph}x{pw})")
    if not interpolate_pos_encoding and (height, width) != config.image_size_hw:
        h, w = config.image_size_hw
        raise ValueError(
            f"input image size ({height}x{width}) doesn't match the model ({h}x{w}); "
            "pass interpolate_pos_encoding=True to run at another size"
        )
    return height // ph, width // pw


def patch_grid(config: Data2VecVisionConfig, pixel_shape: tuple) -> tuple[int, int]:
    """(rows, columns) of patches an NCHW batch of shape ``pixel_shape`` is cut into."""
    ph, pw = config.patch_size_hw
    return int(pixel_shape[2]) // ph, int(pixel_shape[3]) // pw


def check_masked_positions(config: Data2VecVisionConfig, pixel_shape: tuple, mask_shape: tuple) -> None:
    """``bool_masked_pos`` needs a mask token and one entry per patch: (batch, num_patches)."""
    if not config.use_mask_token:
        raise ValueError("bool_masked_pos needs a mask token: set Data2VecVisionConfig.use_mask_token=True")
    rows, cols = patch_grid(config, pixel_shape)
    expected = (pixel_shape[0], rows * cols)
    if tuple(mask_shape) != expected:
        raise ValueError(f"bool_masked_pos must have shape (batch, num_patches) = {expected}, got {tuple(mask_shape)}")


def check_image_class_labels(config: Data2VecVisionConfig, labels: TensorInfo, batch) -> None:
    """Image-classification labels: one per image, of the loss' kind, class ids in range."""
    shape = labels.shape
    if shape[0] is not None and batch is not None and shape[0] != batch:
        raise ValueError(f"labels has batch size {shape[0]}, pixel_values has {batch}")
    check_classification_labels(config, tuple(shape), labels.dtype, batch)
    if labels.values is not None and is_integer_dtype(labels.dtype) and config.num_labels > 1:
        check_label_range("labels", labels.values, config.num_labels)


def check_segmentation_labels(config: Data2VecVisionConfig, labels: TensorInfo, batch) -> None:
    """Segmentation labels: (batch, height, width) integer class ids or the ignore index."""
    if config.num_labels == 1:
        raise ValueError("semantic segmentation needs num_labels > 1")
    shape = labels.shape
    if len(shape) != 3 or (shape[0] is not None and batch is not None and shape[0] != batch):
        raise ValueError(f"labels must have shape (batch={batch}, height, width), got {tuple(shape)}")
    if not is_integer_dtype(labels.dtype):
        raise TypeError(f"segmentation labels must be integers, got {labels.dtype}")
    if labels.values is not None:
        check_label_range("labels", labels.values, config.num_labels, config.semantic_loss_ignore_index)
