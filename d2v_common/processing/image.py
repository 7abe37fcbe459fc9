"""Images -> ``pixel_values`` for the vision models (the BEiT image processor's behaviour).

Steps, in order: resize (through Pillow, so the pixels equal HF's, which also resizes with
Pillow), centre crop (zero padding when the image is smaller than the crop), rescale, normalise,
channels first. Segmentation maps get the same geometry (optionally with ``reduce_labels``)
and come back as int64 ``labels``. ``post_process_semantic_segmentation`` turns logits into
label maps at any size, with the bilinear resize of ``torch.nn.functional.interpolate``.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any

import numpy as np

from d2v_common.models.interpolation import bilinear_matrix
from d2v_common.processing.base import (
    PreprocessorConfigFile,
    BatchFeature,
    as_numpy,
    check_return_tensors,
    optional_import,
    stack_or_list,
)

COMPATIBLE_TYPES = ("BeitImageProcessor", "BeitImageProcessorFast", "BeitFeatureExtractor")
# Pillow's resampling filters by name; config files store the integer.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
FORMATS = ("channels_first", "channels_last")
NO_CHANNEL_AXIS = (
    "image of shape {shape} has no channel axis: give it one ((H, W, 1) or (1, H, W)) or convert it to RGB"
)


def _size(value: Any, name: str) -> dict[str, int]:
    """HF's size forms (int, (h, w), {"height", "width"}) -> {"height": h, "width": w}."""
    if isinstance(value, dict):
        if set(value) != {"height", "width"}:
            raise ValueError(f"{name} must have the keys 'height' and 'width' for this processor, got {sorted(value)}")
        h, w = value["height"], value["width"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = value
    else:
        h = w = value
    for v in (h, w):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must hold positive ints, got {value!r}")
    return {"height": int(h), "width": int(w)}


def _resample(value: Any) -> int:
    if isinstance(value, str) and value.lower() in RESAMPLE:
        return RESAMPLE[value.lower()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in RESAMPLE.values():
        return int(value)  # also Pillow's and HF's resampling enums, which are ints
    raise ValueError(f"resample must be one of {sorted(RESAMPLE)} or Pillow's filter numbers 0-5, got {value!r}")


def _per_channel(value: Any, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}")
    return [float(v) for v in values]


def _is_pil(value: Any) -> bool:
    pil = sys.modules.get("PIL.Image")  # a PIL image can only exist if Pillow is already imported
    return pil is not None and isinstance(value, pil.Image)


def flat_list(items: Any, ndim: int, what: str) -> list[np.ndarray]:
    """One array per item from a single item, a batched array, or (nested) lists of either."""
    if _is_pil(items):
        return [np.asarray(items)]
    if isinstance(items, (list, tuple)):
        if len(items) == 0:
            raise ValueError(f"no {what}s given")
        return [one for item in items for one in flat_list(item, ndim, what)]
    array = as_numpy(items)
    if array.ndim == ndim:
        return [array]
    if what == "image" and array.ndim == 2:
        raise ValueError(NO_CHANNEL_AXIS.format(shape=array.shape))
    if array.ndim == ndim + 1:
        if len(array) == 0:
            raise ValueError(f"no {what}s given")
        return list(array)
    raise ValueError(f"a {what} must have {ndim} dimensions (or {ndim + 1} for a batch), got shape {array.shape}")


def to_channels_last(image: np.ndarray, input_data_format: str | None) -> np.ndarray:
    """(H, W, C) from (C, H, W) or (H, W, C); a missing format is inferred from 1- or 3-channel axes."""
    if image.ndim == 2:
        raise ValueError(NO_CHANNEL_AXIS.format(shape=image.shape))
    if input_data_format is None:
        if image.shape[0] in (1, 3):  # channels first wins when both ends could be channels, as in HF
            input_data_format = "channels_first"
        elif image.shape[-1] in (1, 3):
            input_data_format = "channels_last"
        else:
            raise ValueError(
                f"cannot tell the channel axis of an image of shape {image.shape} (1 or 3 channels expected); "
                "pass input_data_format='channels_first' or 'channels_last'"
            )
    if input_data_format not in FORMATS:
        raise ValueError(f"input_data_format must be one of {FORMATS}, got {input_data_format!r}")
    return np.moveaxis(image, 0, -1) if input_data_format == "channels_first" else image


def _as_uint8_for_pil(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pillow holds 8-bit pixels: integral values in [0, 255] go as they are, values in [0, 1] are scaled by 255.

    Returns the uint8 array and whether it was scaled (then the result is scaled back).
    """
    if image.dtype == np.uint8:
        return image, False
    if np.allclose(image, image.astype(np.int64)):
        if image.min() >= 0 and image.max() <= 255:
            return image.astype(np.uint8), False
        raise ValueError(
            f"integer values must lie in [0, 255] to be resized, got [{image.min()}, {image.max()}]"
        )
    if image.min() >= 0 and image.max() <= 1:
        return rescale(image, 255).astype(np.uint8), True
    raise ValueError(
        f"float pixel values must lie in [0, 1] (or be integers in [0, 255]) to be resized, "
        f"got [{image.min()}, {image.max()}]"
    )


def pil_resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Resize an (H, W, C) array with Pillow; the dtype comes back as uint8 (float32 for [0, 1] input)."""
    pil = optional_import("PIL.Image")
    pixels, scaled = _as_uint8_for_pil(image)
    channels = pixels.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"Pillow resizes images with 1 to 4 channels, got {channels}")
    img = pil.fromarray(pixels[..., 0] if channels == 1 else pixels)
    out = np.asarray(img.resize((width, height), resample=resample))
    out = out.reshape(height, width, channels)
    return rescale(out, 1 / 255) if scaled else out


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop (H, W, C) around its centre; an image smaller than the crop is zero-padded (centred) first."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return image[top : top + height, left : left + width]
    new_h, new_w = max(h, height), max(w, width)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas = np.zeros((new_h, new_w) + image.shape[2:], dtype=image.dtype)
    canvas[pad_top : pad_top + h, pad_left : pad_left + w] = image
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    # float64 product, float32 result: the same rounding as HF.
    return (image.astype(np.float64) * scale).astype(np.float32)


def normalize(image: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """(x - mean) / std per channel of an (H, W, C) image, in float32 (or the image's float dtype)."""
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    channels = image.shape[-1]
    for name, values in (("image_mean", mean), ("image_std", std)):
        if len(values) not in (1, channels):
            raise ValueError(f"{name} has {len(values)} values but the image has {channels} channels")
    mean = np.array(mean * channels if len(mean) == 1 else mean, dtype=image.dtype)
    std = np.array(std * channels if len(std) == 1 else std, dtype=image.dtype)
    return (image - mean) / std


def reduce_labels(label: np.ndarray) -> np.ndarray:
    """Drop background: 0 -> 255 (ignored), every other class id k -> k - 1; 255 stays 255."""
    label = label.copy()
    label[label == 0] = 255
    label = label - 1
    label[label == 254] = 255
    return label


class ImageProcessor(PreprocessorConfigFile):
    """Images (and segmentation maps) -> ``pixel_values`` (and ``labels``), as HF's BeitImageProcessor."""

    model_input_names = ("pixel_values",)
    COMPATIBLE_TYPES = COMPATIBLE_TYPES
    TYPE_KEYS = ("image_processor_type", "feature_extractor_type")

    def __init__(
        self,
        do_resize: bool = True,
        size: Any = None,
        resample: Any = "bicubic",
        do_center_crop: bool = True,
        crop_size: Any = None,
        rescale_factor: float = 1 / 255,
        do_rescale: bool = True,
        do_normalize: bool = True,
        image_mean: Any = None,
        image_std: Any = None,
        do_reduce_labels: bool = False,
        **extra: Any,
    ):
        if "reduce_labels" in extra:  # the older name of do_reduce_labels
            do_reduce_labels = bool(extra.pop("reduce_labels"))
        self.do_resize = bool(do_resize)
        self.size = _size(256 if size is None else size, "size")
        self.resample = _resample(resample)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size(224 if crop_size is None else crop_size, "crop_size")
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _per_channel([0.5, 0.5, 0.5] if image_mean is None else image_mean, "image_mean")
        self.image_std = _per_channel([0.5, 0.5, 0.5] if image_std is None else image_std, "image_std")
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        self.do_reduce_labels = bool(do_reduce_labels)
        self.extra = extra

    # ------------------------------------------------------------------ config files
    def to_dict(self) -> dict:
        extra = {k: v for k, v in self.extra.items() if k != "feature_extractor_type"}
        return {
            **extra,
            "image_processor_type": "BeitImageProcessor",
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": dict(self.crop_size),
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            # one value per channel, or the single value as a number (HF reads both, not a 1-list)
            "image_mean": self.image_mean[0] if len(self.image_mean) == 1 else list(self.image_mean),
            "image_std": self.image_std[0] if len(self.image_std) == 1 else list(self.image_std),
            "do_reduce_labels": self.do_reduce_labels,
        }

    # ------------------------------------------------------------------ preprocessing
    def _geometry(self, image: np.ndarray, o: dict) -> np.ndarray:
        if o["do_resize"]:
            image = pil_resize(image, o["size"]["height"], o["size"]["width"], o["resample"])
        if o["do_center_crop"]:
            image = center_crop(image, o["crop_size"]["height"], o["crop_size"]["width"])
        return image

    def _image(self, image: np.ndarray, o: dict, input_data_format: str | None, data_format: str) -> np.ndarray:
        if image.dtype.kind not in "uif":
            raise TypeError(f"pixel values must be numbers, got dtype {image.dtype}")
        image = to_channels_last(image, input_data_format)
        if image.size == 0:
            raise ValueError(f"empty image of shape {image.shape}")
        if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
            raise ValueError("the image contains NaN or infinite values")
        if o["do_rescale"] and image.dtype != np.uint8 and image.min() >= 0 and image.max() <= 1:
            warnings.warn(
                "the image already looks rescaled (values in [0, 1]); pass do_rescale=False if it is", stacklevel=3
            )
        image = self._geometry(image, o)
        if o["do_rescale"]:
            image = rescale(image, o["rescale_factor"])
        if o["do_normalize"]:
            image = normalize(image, o["image_mean"], o["image_std"])
        image = image.astype(np.float32, copy=False)
        return np.moveaxis(image, -1, 0) if data_format == "channels_first" else image

    def _label_map(self, label: np.ndarray, o: dict) -> np.ndarray:
        if label.dtype.kind not in "uif" or (label.dtype.kind == "f" and not np.array_equal(label, np.round(label))):
            raise ValueError(f"segmentation maps must hold integer class ids, got dtype {label.dtype}")
        if label.size == 0:
            raise ValueError(f"empty segmentation map of shape {label.shape}")
        if o["do_reduce_labels"]:
            label = reduce_labels(label)
        # The maps follow the image geometry, with the image filter unless label_resample set another.
        return self._geometry(label[..., None], o)[..., 0].astype(np.int64)

    def __call__(
        self,
        images: Any,
        segmentation_maps: Any = None,
        return_tensors: str | None = None,
        *,
        do_resize: bool | None = None,
        size: Any = None,
        resample: Any = None,
        do_center_crop: bool | None = None,
        crop_size: Any = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: Any = None,
        image_std: Any = None,
        do_reduce_labels: bool | None = None,
        label_resample: Any = None,
        data_format: str = "channels_first",
        input_data_format: str | None = None,
    ) -> BatchFeature:
        """Preprocess one image or a batch: PIL images, arrays (H, W, C) / (C, H, W), or batched arrays.

        Arguments left as None take the processor's settings. ``pixel_values`` is float32
        (B, C, H, W) (or (B, H, W, C) with data_format='channels_last'); ``labels`` is int64 (B, H, W).
        Label maps are resized with the image filter, as HF does (a smooth filter such as bicubic
        invents class ids at boundaries); ``label_resample="nearest"`` keeps them exact.
        """
        check_return_tensors(return_tensors)
        if data_format not in FORMATS:
            raise ValueError(f"data_format must be one of {FORMATS}, got {data_format!r}")
        pick = lambda value, default: default if value is None else value  # noqa: E731
        o = dict(
            do_resize=bool(pick(do_resize, self.do_resize)),
            size=self.size if size is None else _size(size, "size"),
            resample=self.resample if resample is None else _resample(resample),
            do_center_crop=bool(pick(do_center_crop, self.do_center_crop)),
            crop_size=self.crop_size if crop_size is None else _size(crop_size, "crop_size"),
            do_rescale=bool(pick(do_rescale, self.do_rescale)),
            rescale_factor=float(pick(rescale_factor, self.rescale_factor)),
            do_normalize=bool(pick(do_normalize, self.do_normalize)),
            image_mean=self.image_mean if image_mean is None else _per_channel(image_mean, "image_mean"),
            image_std=self.image_std if image_std is None else _per_channel(image_std, "image_std"),
            do_reduce_labels=bool(pick(do_reduce_labels, self.do_reduce_labels)),
        )
        pixels = [self._image(img, o, input_data_format, data_format) for img in flat_list(images, 3, "image")]
        if label_resample is not None:
            o["resample"] = _resample(label_resample)
        out = BatchFeature(pixel_values=stack_or_list(pixels, "pixel_values", return_tensors))
        if segmentation_maps is not None:
            maps = flat_list(segmentation_maps, 2, "segmentation map")
            if len(maps) != len(pixels):
                raise ValueError(f"got {len(pixels)} images but {len(maps)} segmentation maps")
            out["labels"] = stack_or_list([self._label_map(m, o) for m in maps], "labels", return_tensors)
        return out.convert_to_tensors(return_tensors)

    preprocess = __call__

    # ------------------------------------------------------------------ postprocessing
    def post_process_semantic_segmentation(self, outputs: Any, target_sizes: Any = None) -> list[np.ndarray]:
        """Per-pixel class ids (int64 arrays (H, W)) from segmentation logits (B, num_labels, h, w).

        ``outputs`` is a model output with ``.logits`` (PyTorch or Keras) or the logits themselves.
        With ``target_sizes`` (one (height, width) per image, e.g. the original image sizes) the
        logits are first resized bilinearly (align_corners=False, as torch's interpolate).
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if isinstance(logits, dict):
            logits = logits["logits"]
        logits = as_numpy(logits)
        if logits.ndim != 4:
            raise ValueError(f"segmentation logits must be (batch, num_labels, height, width), got {logits.shape}")
        if target_sizes is None:
            return [np.argmax(item, axis=0).astype(np.int64) for item in logits]
        sizes = [tuple(int(v) for v in as_numpy(s).reshape(-1)) for s in target_sizes]
        if len(sizes) != len(logits):
            raise ValueError(f"got {len(sizes)} target sizes for a batch of {len(logits)} logits")
        maps = []
        h, w = logits.shape[2:]
        for item, size in zip(logits, sizes):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"each target size must be (height, width) with positive ints, got {size}")
            # Width first, then height: the same sum order as torch's bilinear kernel.
            across = np.matmul(item.astype(np.float32), bilinear_matrix(w, size[1]).T)
            resized = np.matmul(bilinear_matrix(h, size[0]), across)
            maps.append(np.argmax(resized, axis=0).astype(np.int64))
        return maps


__all__ = ["ImageProcessor"]
