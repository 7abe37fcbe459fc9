"""Framework-neutral parts of data2vec self-supervised pretraining.

The method (Baevski et al., 2022): a student encoder sees a masked input and regresses, at the
masked positions, a target built by an EMA teacher from the unmasked input: the average of the
teacher's top-K layer outputs, each normalised. Both frameworks take their hyper-parameters,
their EMA schedule and their masks from here, so fed the same weights, batch and masks they
compute the same step.

- ``PretrainingConfig``: the recipe per modality (``PretrainingConfig.for_modality("audio")``).
- ``span_mask`` / ``bert_mask`` / ``block_mask``: seeded numpy mask generators.
- ``reference_targets`` / ``reference_loss`` / ``spread``: the target recipe, the loss and the
  monitoring statistic in numpy: the definition the framework code is tested against.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from d2v_common.models.audio import compute_mask_indices
from d2v_common.models.outputs import ModelOutput

MODALITIES = ("audio", "text", "vision")
TARGET_LAYERS = ("ffn", "block")
NORM_EPS = 1e-5  # instance / layer norm of the targets (no affine parameters)
SPREAD_EPS = 1e-6  # inside the sqrt of the monitoring statistic


class TargetCollapseWarning(UserWarning):
    """The teacher's targets (or the student's predictions) stopped varying across positions."""


@dataclass
class PretrainingConfig:
    """Hyper-parameters of one data2vec pretraining run.

    Targets: ``average_top_k_layers`` teacher layers (clamped to the encoder's depth), taken at
    ``target_layer`` ("ffn": the feed-forward output before the block's last residual, as for
    audio and text; "block": the block output, as for vision); each normalised
    (``instance_norm_target_layer`` over time, ``layer_norm_target_layer`` over features), then
    averaged, then optionally normalised again (``layer_norm_targets`` / ``instance_norm_targets``).

    Loss: per masked position, the sum over features of squared error (``loss_beta == 0``) or
    smooth-L1 with ``loss_beta``; times ``loss_scale`` (None: 1 / sqrt(hidden)); averaged over the
    masked positions of the whole (global) batch.

    Teacher: tau goes linearly from ``ema_decay`` to ``ema_end_decay`` over the first
    ``ema_anneal_end_step`` optimizer updates, then stays (equal values: constant).

    Masks: audio spans (``mask_prob`` chance per frame of starting a ``mask_length`` span, at
    least ``min_masks`` spans); text BERT-style (``mask_prob`` of the tokens selected, of those
    ``random_token_prob`` replaced by a random token and ``leave_unmasked_prob`` kept, the rest
    by ``mask_token_id``, default the last id as for RoBERTa's ``<mask>``); vision blocks
    (``mask_prob`` of the patches as rectangles of at least ``min_block_patches`` patches with
    aspect ratios in [``min_aspect``, 1 / ``min_aspect``]).

    Monitoring: a ``TargetCollapseWarning`` when the targets' spread falls below
    ``min_target_var`` (or, if set, the predictions' below ``min_pred_var``: off by default, as a
    fresh regression head predicts nearly constant values) once ``var_check_after`` updates are done.
    """

    modality: str
    average_top_k_layers: int
    target_layer: str
    layer_norm_target_layer: bool = False
    instance_norm_target_layer: bool = False
    layer_norm_targets: bool = False
    instance_norm_targets: bool = False
    loss_beta: float = 0.0
    loss_scale: float | None = None
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 30000
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 1
    mask_token_id: int | None = None
    random_token_prob: float = 0.1
    leave_unmasked_prob: float = 0.1
    min_block_patches: int = 16
    min_aspect: float = 0.3
    min_target_var: float = 0.1
    min_pred_var: float | None = None
    var_check_after: int = 0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.target_layer not in TARGET_LAYERS:
            raise ValueError(f"target_layer must be one of {TARGET_LAYERS}, got {self.target_layer!r}")
        if int(self.average_top_k_layers) < 1:
            raise ValueError(f"average_top_k_layers must be at least 1, got {self.average_top_k_layers}")
        for name in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.ema_anneal_end_step < 0:
            raise ValueError(f"ema_anneal_end_step must be >= 0, got {self.ema_anneal_end_step}")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.loss_beta < 0:
            raise ValueError(f"loss_beta must be >= 0 (0 means L2), got {self.loss_beta}")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ValueError(f"loss_scale must be positive (or None for 1/sqrt(hidden)), got {self.loss_scale}")
        if self.mask_length < 1 or self.min_masks < 0 or self.min_block_patches < 1:
            raise ValueError("mask_length and min_block_patches must be >= 1, min_masks >= 0")
        if not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {self.min_aspect}")
        p, q = self.random_token_prob, self.leave_unmasked_prob
        if p < 0 or q < 0 or p + q > 1:
            raise ValueError(f"random_token_prob + leave_unmasked_prob must be in [0, 1], got {p} + {q}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_modality(cls, modality: str, **overrides) -> "PretrainingConfig":
        """The paper's recipe for ``modality``, with ``overrides`` applied."""
        if modality not in DEFAULTS:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return cls.from_dict({**DEFAULTS[modality], **overrides, "modality": modality})

    def copy(self, **changes) -> "PretrainingConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainingConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown PretrainingConfig fields: {sorted(unknown)}")
        return cls(**data)

    # -------------------------------------------------------------------- schedules
    def top_k(self, num_layers: int) -> int:
        """Layers averaged into the targets (clamped to the encoder's depth)."""
        return max(1, min(int(self.average_top_k_layers), int(num_layers)))

    def scale(self, hidden: int) -> float:
        return 1.0 / math.sqrt(hidden) if self.loss_scale is None else float(self.loss_scale)

    def tau(self, step: int) -> float:
        """EMA decay for the teacher update after optimizer update ``step`` (1 = the first)."""
        return ema_decay_at(step, self.ema_decay, self.ema_end_decay, self.ema_anneal_end_step)


def ema_decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear from ``start`` (step 0) to ``end`` (step ``anneal_steps``), then ``end``."""
    if start == end or anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / anneal_steps)


DEFAULTS = {
    # L2 on FFN outputs, instance norm per layer, tau 0.999 -> 0.9999 over 30k updates, 65% spans of 10
    "audio": dict(
        average_top_k_layers=8, target_layer="ffn", instance_norm_target_layer=True, loss_beta=0.0,
        loss_scale=None, ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=30000,
        mask_prob=0.65, mask_length=10, min_masks=1,
    ),
    # smooth-L1 (beta 4) on FFN outputs, layer norm per layer, tau over 100k updates, BERT masking
    "text": dict(
        average_top_k_layers=10, target_layer="ffn", layer_norm_target_layer=True, loss_beta=4.0,
        loss_scale=1.0, ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=100000, mask_prob=0.15,
    ),
    # smooth-L1 (beta 2) on block outputs, layer norm per layer, constant tau 0.9998, 60% blocks
    "vision": dict(
        average_top_k_layers=6, target_layer="block", layer_norm_target_layer=True, loss_beta=2.0,
        loss_scale=None, ema_decay=0.9998, ema_end_decay=0.9998, ema_anneal_end_step=0, mask_prob=0.6,
        min_block_patches=16,
    ),
}


def resolve(config, modality: str) -> PretrainingConfig:
    """None -> the modality's defaults; a dict -> overrides; a config of the right modality as is."""
    if config is None:
        return PretrainingConfig.for_modality(modality)
    if isinstance(config, dict):
        return PretrainingConfig.for_modality(modality, **config)
    if not isinstance(config, PretrainingConfig):
        raise TypeError(f"pretraining_config must be a PretrainingConfig or a dict, got {type(config).__name__}")
    if config.modality != modality:
        raise ValueError(f"this is a {modality} model but the pretraining config is for {config.modality}")
    return config


def check_backbone_config(config, pretraining_config: PretrainingConfig) -> None:
    """What the student backbone's config must allow for its modality's masking and targets."""
    modality = pretraining_config.modality
    if modality == "audio":
        if config.mask_time_prob <= 0 and config.mask_feature_prob <= 0:
            raise ValueError(
                "audio pretraining masks frames with masked_spec_embed, which exists only when "
                "mask_time_prob > 0 (or mask_feature_prob > 0) in the Data2VecAudioConfig"
            )
        if not bool(getattr(config, "apply_spec_augment", True)):
            raise ValueError("audio pretraining needs apply_spec_augment=True (masks are applied through it)")
        if config.add_adapter:
            raise ValueError("audio pretraining regresses encoder frames: build the config with add_adapter=False")
    elif modality == "text":
        if config.is_decoder:
            raise ValueError("text pretraining needs a bidirectional encoder: is_decoder=False")
    elif modality == "vision":
        if not config.use_mask_token:
            raise ValueError("vision pretraining replaces masked patches by the mask token: set use_mask_token=True")
        if pretraining_config.target_layer != "block":
            raise ValueError("vision targets are block outputs: use target_layer='block'")


def check_mask(name: str, shape: tuple, expected: tuple, dtype: str, values=None) -> None:
    """A given mask: the expected shape, boolean (or integer 0/1), and (when its values are at
    hand) at least one masked position."""
    shape, expected = tuple(shape), tuple(expected)
    if len(shape) != len(expected) or any(a is not None and b is not None and a != b for a, b in zip(shape, expected)):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(shape)}")
    if "float" in dtype or "half" in dtype:
        raise TypeError(f"{name} must be boolean (or 0/1 integers), got {dtype}")
    if values is not None and not np.asarray(values).any():
        raise ValueError(f"{name} masks no position: the loss would be empty")


# ---------------------------------------------------------------------------- outputs


class Data2VecPreTrainingOutput(ModelOutput):
    """``loss`` (to back-propagate), ``target_var`` / ``pred_var`` (spread of the targets and of
    the predictions over the masked positions: mean over features of the standard deviation),
    ``mask`` (the positions in the loss), ``prediction`` (student's regression output, every
    position) and ``target`` (teacher's targets, every position)."""

    fields = ("loss", "target_var", "pred_var", "mask", "prediction", "target")


# ------------------------------------------------------------------------------ masks


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def span_mask(config: PretrainingConfig, batch: int, frames: int, lengths=None, rng=None) -> np.ndarray:
    """Audio: (batch, frames) bool, spans of ``mask_length`` frames inside each row's valid frames."""
    if frames < config.mask_length:
        raise ValueError(
            f"the input gives {frames} frames, fewer than mask_length={config.mask_length}: "
            "give longer audio or lower PretrainingConfig.mask_length"
        )
    mask = compute_mask_indices(
        (batch, frames), config.mask_prob, config.mask_length, lengths, config.min_masks, _rng(rng)
    )
    if lengths is not None:
        mask &= np.arange(frames)[None, :] < np.asarray(lengths).reshape(-1, 1)
    return mask


def special_token_ids(text_config) -> list[int]:
    return sorted({int(t) for t in (text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id)
                   if t is not None})


def mask_token_id(config: PretrainingConfig, text_config) -> int:
    token = text_config.vocab_size - 1 if config.mask_token_id is None else int(config.mask_token_id)
    if not 0 <= token < text_config.vocab_size:
        raise ValueError(f"mask_token_id must be in [0, vocab_size={text_config.vocab_size}), got {token}")
    return token


def bert_mask(config: PretrainingConfig, text_config, input_ids, attention_mask=None, rng=None):
    """Text: BERT-style corruption. Returns (corrupted input_ids, selected (B, L) bool).

    Of the real, non-special tokens ``mask_prob`` are selected (rounded per row, at least one);
    each selected token becomes the mask token, a random non-special token or itself with
    probabilities 1 - p - q, p = ``random_token_prob``, q = ``leave_unmasked_prob``.
    """
    rng = _rng(rng)
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"input_ids must be a 2-D integer array, got {ids.dtype} {ids.shape}")
    special = special_token_ids(text_config)
    mask_id = mask_token_id(config, text_config)
    candidates = ~np.isin(ids, special + [mask_id])
    if attention_mask is not None:
        attention_mask = np.asarray(attention_mask)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {ids.shape}, got {attention_mask.shape}")
        candidates &= attention_mask.astype(bool)
    counts = candidates.sum(-1)
    if (counts == 0).any():
        rows = np.nonzero(counts == 0)[0].tolist()
        raise ValueError(f"rows {rows} have no maskable token (only special tokens or padding)")
    selected = np.zeros(ids.shape, dtype=bool)
    for row in range(ids.shape[0]):
        pool = np.nonzero(candidates[row])[0]
        n = min(len(pool), max(1, int(config.mask_prob * len(pool) + rng.random())))
        selected[row, rng.choice(pool, n, replace=False)] = True
    u = rng.random(ids.shape)
    p, q = config.random_token_prob, config.leave_unmasked_prob
    to_mask = selected & (u < 1.0 - p - q)
    to_random = selected & (u >= 1.0 - p - q) & (u < 1.0 - q)
    vocab = np.setdiff1d(np.arange(text_config.vocab_size), special + [mask_id])
    out = np.where(to_mask, mask_id, ids)
    out = np.where(to_random, vocab[rng.integers(0, len(vocab), ids.shape)], out)
    return out.astype(ids.dtype), selected


def block_mask(config: PretrainingConfig, batch: int, grid: tuple[int, int], rng=None) -> np.ndarray:
    """Vision: (batch, patches) bool, BEiT-style blocks covering about ``mask_prob`` of the grid."""
    rng = _rng(rng)
    h, w = int(grid[0]), int(grid[1])
    target = max(1, int(round(config.mask_prob * h * w)))
    out = np.zeros((batch, h, w), dtype=bool)
    for row in range(batch):
        mask = out[row]
        count = 0
        while count < target:
            added = _place_block(mask, target - count, config, rng)
            if added == 0:
                break
            count += added
        if count == 0:  # a grid too small for any block: mask single patches
            mask.flat[rng.choice(h * w, target, replace=False)] = True
    return out.reshape(batch, h * w)


def _place_block(mask: np.ndarray, budget: int, config: PretrainingConfig, rng) -> int:
    """Try a few random rectangles; mask the first that adds 1..budget new patches."""
    h, w = mask.shape
    low = min(config.min_block_patches, budget)
    log_ratio = math.log(config.min_aspect)
    for _ in range(10):
        area = rng.uniform(low, budget)
        ratio = math.exp(rng.uniform(log_ratio, -log_ratio))
        bh, bw = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if not (1 <= bh <= h and 1 <= bw <= w):
            continue
        top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        window = mask[top : top + bh, left : left + bw]
        new = bh * bw - int(window.sum())
        if 0 < new <= budget:
            window[...] = True
            return new
    return 0


# ------------------------------------------------------------ reference recipe (numpy)


def _layer_norm(x: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + NORM_EPS)


def _instance_norm(x: np.ndarray) -> np.ndarray:  # (B, T, C): per row and channel, over time
    mean = x.mean(1, keepdims=True)
    var = ((x - mean) ** 2).mean(1, keepdims=True)
    return (x - mean) / np.sqrt(var + NORM_EPS)


def reference_targets(layers: list[np.ndarray], config: PretrainingConfig) -> np.ndarray:
    """Targets from the teacher's per-layer outputs (all layers, (B, T, C) each), in float64."""
    top = [np.asarray(x, np.float64) for x in layers[-config.top_k(len(layers)):]]
    if config.instance_norm_target_layer:
        top = [_instance_norm(x) for x in top]
    if config.layer_norm_target_layer:
        top = [_layer_norm(x) for x in top]
    y = sum(top) / len(top)
    if config.layer_norm_targets:
        y = _layer_norm(y)
    if config.instance_norm_targets:
        y = _instance_norm(y)
    return y


def reference_loss(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray, config: PretrainingConfig) -> float:
    """Mean over masked positions of the per-position regression loss (see PretrainingConfig)."""
    x, y = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    d = np.abs(x - y)
    beta = config.loss_beta
    per = d**2 if beta == 0 else np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    per = per.sum(-1) * config.scale(x.shape[-1])
    m = np.asarray(mask, bool)
    return float(per[m].sum() / m.sum())


def spread(values: np.ndarray, mask: np.ndarray) -> float:
    """Monitoring statistic: mean over features of sqrt(unbiased variance over masked positions + 1e-6)."""
    v = np.asarray(values, np.float64)[np.asarray(mask, bool)]
    return float(np.sqrt(v.var(0, ddof=1) + SPREAD_EPS).mean())


def collapse_message(target_var: float, pred_var: float, config: PretrainingConfig) -> str | None:
    """A warning text when the targets or predictions have collapsed, else None."""
    problems = []
    if target_var < config.min_target_var:
        problems.append(f"target_var {target_var:.4g} < min_target_var {config.min_target_var}")
    if config.min_pred_var is not None and pred_var < config.min_pred_var:
        problems.append(f"pred_var {pred_var:.4g} < min_pred_var {config.min_pred_var}")
    if not problems:
        return None
    return (
        "data2vec representation collapse: " + "; ".join(problems)
        + " (the teacher's targets no longer differ between positions; check the learning rate, "
        "the EMA decay and the target normalisation)"
    )


__all__ = [
    "Data2VecPreTrainingOutput",
    "PretrainingConfig",
    "TargetCollapseWarning",
    "bert_mask",
    "block_mask",
    "collapse_message",
    "ema_decay_at",
    "reference_loss",
    "reference_targets",
    "span_mask",
    "spread",
]


def check_masked_tokens_given_together(masked_input_ids, masked_positions) -> None:
    """Text pretraining takes the corrupted tokens and their positions together, or neither."""
    if (masked_input_ids is None) != (masked_positions is None):
        raise ValueError("give masked_input_ids and masked_positions together (or neither)")


def pretraining_patch_grid(vision_config, pixel_shape: tuple) -> tuple[int, int]:
    """The patch grid of an NCHW pretraining batch (the block masks are drawn on it)."""
    if len(pixel_shape) != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_shape)}")
    ph, pw = vision_config.patch_size_hw
    return int(pixel_shape[2]) // ph, int(pixel_shape[3]) // pw
