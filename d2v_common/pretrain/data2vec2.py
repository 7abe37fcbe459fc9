"""data2vec 2.0 pretraining: the framework-neutral parts (numpy only).

Upstream is fairseq's ``Data2VecMultiModel`` (examples/data2vec/models/data2vec2.py at commit
3d262bb). One training step:

* the student's modality front end ("local encoder") embeds the input once; the sequence is
  repeated ``clone_batch`` times (rows ``i*c .. i*c+c-1`` are sample i's clones), each copy gets
  its own mask, and the masked positions are *removed* before the transformer;
* a light conv decoder (2-D for images, 1-D for audio and text) gets the encoder output with
  zeros in the masked slots and predicts, at every position, the teacher's target;
* the EMA teacher runs once per sample on the unmasked input; the targets are the average of
  its top ``average_top_k_layers`` block FFN outputs, each instance- / batch- / layer-normalised
  as configured, then the average layer- / instance-normalised as configured;
* the loss: per masked position, L2 (``loss_beta == 0``) or smooth-L1 summed over features times
  ``loss_scale`` (None: 1/sqrt(D)), plus, with ``cls_loss``, the CLS token regressing the mean
  target; ``total`` = sum of every loss / number of masked positions (fairseq's normalisation).

What lives here: ``Data2Vec2PretrainingConfig`` (from a fairseq checkpoint's ``cfg.model``),
the decoder's weight names, which encoder weights the EMA teacher holds, reading a fairseq
pretraining checkpoint into canonical arrays (with the fairseq name of every tensor), the EMA
decay schedule and the input checks and their error texts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from d2v_common.checkpoints import fairseq
from d2v_common.loader.matching import LoadReport
from d2v_common.models.outputs import ModelOutput
from d2v_common.checkpoints.hub import pop_hub_options
from d2v_common.loader.pretrained import LoadOptions, OpenRequest, open_checkpoint
from d2v_common.spec import weight_spec
from d2v_common.spec.core import ZEROS, ParamSpec, WeightSpec, normal
from d2v_common.spec.data2vec2 import FAMILIES

MODALITIES = {"IMAGE": "vision", "AUDIO": "audio", "TEXT": "text"}
PRETRAINING_FILE = "d2v_pretraining.json"  # beside config.json in a saved pretraining folder

# Architecture of each modality's pretraining class and of the backbone it trains.
ARCHITECTURES = {
    "vision": ("Data2Vec2VisionForPreTraining", "Data2Vec2VisionModel"),
    "audio": ("Data2Vec2AudioForPreTraining", "Data2Vec2AudioModel"),
    "text": ("Data2Vec2TextForPreTraining", "Data2Vec2TextModel"),
}
# Prefix of the student's tensors in a pretraining model's arrays (the backbone's weight prefix).
STUDENT_PREFIX = {m: FAMILIES[m + "2"].BASE_PREFIX for m in ARCHITECTURES}


class Data2Vec2PreTrainingOutput(ModelOutput):
    """``loss`` (fairseq's ``total``: every loss summed / ``sample_size``); ``losses`` (name ->
    summed loss: ``<MODALITY>_regression``, ``cls``); ``sample_size`` (masked positions, all
    clones); ``mask`` (batch * clone_batch, T) bool; ``prediction`` (the decoder's output,
    batch * clone_batch, T, D); ``target`` (the teacher's targets, batch, T, D)."""

    fields = ("loss", "losses", "sample_size", "mask", "prediction", "target")


@dataclass
class Data2Vec2PretrainingConfig:
    """The fairseq ``data2vec_multi`` options one pretraining step depends on (names as upstream).

    Targets: ``average_top_k_layers``, ``end_of_block_targets`` (block outputs instead of FFN
    outputs), ``instance_norm_target_layer`` / ``batch_norm_target_layer`` /
    ``layer_norm_target_layer`` (per layer), ``layer_norm_targets`` / ``instance_norm_targets``
    (on the average). Loss: ``loss_beta``, ``loss_scale``, ``d2v_loss`` (weight of the
    regression), ``cls_loss`` (weight of the CLS regression; needs extra tokens). Teacher:
    ``ema_decay`` -> ``ema_end_decay`` linearly over ``ema_anneal_end_step`` updates,
    ``ema_encoder_only`` (the teacher is the main blocks only; the student's context encoder
    feeds it), ``ema_local_encoder`` (the teacher has its own front end). Masking (the modality's
    options): ``mask_prob``, ``mask_length``, ``mask_prob_adjust``, ``inverse_mask``,
    ``keep_masked_pct``, ``mask_noise_std``, ``encoder_zero_mask``, ``mask_dropout``,
    ``add_masks``. Decoder: ``decoder_*``, ``projection_*``, ``add_positions_*``.

    Examples:
        >>> Data2Vec2PretrainingConfig(modality="audio", ema_anneal_end_step=100).tau(100)
        0.9999
    """

    modality: str
    clone_batch: int = 1
    average_top_k_layers: int = 8
    end_of_block_targets: bool = False
    instance_norm_target_layer: bool = False
    batch_norm_target_layer: bool = False
    layer_norm_target_layer: bool = False
    layer_norm_targets: bool = False
    instance_norm_targets: bool = False
    loss_beta: float = 0.0
    loss_scale: float | None = None
    d2v_loss: float = 1.0
    cls_loss: float = 0.0
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 0
    ema_encoder_only: bool = True
    ema_local_encoder: bool = False
    mask_prob: float = 0.7
    mask_prob_min: float | None = None
    mask_length: int = 5
    mask_prob_adjust: float = 0.0
    inverse_mask: bool = False
    keep_masked_pct: float = 0.0
    mask_noise_std: float = 0.01
    encoder_zero_mask: bool = True
    mask_dropout: float = 0.0
    add_masks: bool = False
    decoder_dim: int = 384
    decoder_groups: int = 16
    decoder_kernel: int = 5
    decoder_layers: int = 5
    decoder_input_dropout: float = 0.1
    decoder_residual: bool = True
    projection_layers: int = 1
    projection_ratio: float = 2.0
    add_positions_masked: bool = False
    add_positions_all: bool = False
    seed: int = 1

    def __post_init__(self):
        if self.modality not in ARCHITECTURES:
            raise ValueError(f"modality must be one of {sorted(ARCHITECTURES)}, got {self.modality!r}")
        if int(self.clone_batch) < 1:
            raise ValueError(f"clone_batch must be at least 1, got {self.clone_batch}")
        if int(self.average_top_k_layers) < 1:
            raise ValueError(f"average_top_k_layers must be at least 1, got {self.average_top_k_layers}")
        for name in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.loss_beta < 0:
            raise ValueError(f"loss_beta must be >= 0 (0 means L2), got {self.loss_beta}")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ValueError(f"loss_scale must be positive (or None for 1/sqrt(hidden)), got {self.loss_scale}")
        if not 0.0 <= self.keep_masked_pct < 1.0:
            raise ValueError(f"keep_masked_pct must be in [0, 1), got {self.keep_masked_pct}")
        if self.decoder_layers < 1 or self.decoder_dim < 1 or self.projection_layers < 1:
            raise ValueError("decoder_layers, decoder_dim and projection_layers must be at least 1")
        if self.decoder_dim % self.decoder_groups:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be divisible by decoder_groups {self.decoder_groups}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fairseq(cls, model_cfg: dict, modality: str) -> "Data2Vec2PretrainingConfig":
        """From a fairseq checkpoint's ``cfg['model']`` (``data2vec_multi``) for ``modality``
        (``IMAGE``, ``AUDIO`` or ``TEXT``)."""
        modality = modality.upper().replace("MODALITY.", "")
        sub = {"IMAGE": "image", "AUDIO": "audio", "TEXT": "text"}[modality]
        mod = (model_cfg.get("modalities") or {}).get(sub) or {}
        dec = mod.get("decoder")
        unsupported = []
        if not isinstance(dec, dict):
            unsupported.append("a modality without decoder (modalities.%s.decoder is None)" % sub)
            dec = {}
        if model_cfg.get("shared_decoder"):
            unsupported.append("shared_decoder")
        for key, value in (("recon_loss", model_cfg.get("recon_loss")), ("mask_channel_prob", mod.get("mask_channel_prob"))):
            if value:
                unsupported.append(f"{key}={value}")
        if mod.get("transformer_decoder"):
            unsupported.append("transformer_decoder=True")
        if mod.get("remove_masks"):
            unsupported.append("remove_masks=True")
        if float(mod.get("local_grad_mult", 1.0) or 0.0) != 1.0:
            unsupported.append(f"local_grad_mult={mod.get('local_grad_mult')}")
        if unsupported:
            raise fairseq.FairseqCheckpointError(
                "data2vec 2.0 pretraining options d2v does not implement: " + ", ".join(unsupported)
            )

        def get(d, key, default):
            value = d.get(key, default)
            return default if value is None else value

        return cls(
            modality=MODALITIES[modality],
            clone_batch=int(get(model_cfg, "clone_batch", 1)),
            average_top_k_layers=int(get(model_cfg, "average_top_k_layers", 8)),
            end_of_block_targets=bool(get(model_cfg, "end_of_block_targets", False)),
            instance_norm_target_layer=bool(get(model_cfg, "instance_norm_target_layer", False)),
            batch_norm_target_layer=bool(get(model_cfg, "batch_norm_target_layer", False)),
            layer_norm_target_layer=bool(get(model_cfg, "layer_norm_target_layer", False)),
            layer_norm_targets=bool(get(model_cfg, "layer_norm_targets", False)),
            instance_norm_targets=bool(get(model_cfg, "instance_norm_targets", False)),
            loss_beta=float(get(model_cfg, "loss_beta", 0.0)),
            loss_scale=None if model_cfg.get("loss_scale") is None else float(model_cfg["loss_scale"]),
            d2v_loss=float(get(model_cfg, "d2v_loss", 1.0)),
            cls_loss=float(get(model_cfg, "cls_loss", 0.0)),
            ema_decay=float(get(model_cfg, "ema_decay", 0.999)),
            ema_end_decay=float(get(model_cfg, "ema_end_decay", 0.9999)),
            ema_anneal_end_step=int(get(model_cfg, "ema_anneal_end_step", 0)),
            ema_encoder_only=bool(get(model_cfg, "ema_encoder_only", True)),
            ema_local_encoder=bool(get(mod, "ema_local_encoder", False)),
            mask_prob=float(get(mod, "mask_prob", 0.7)),
            mask_prob_min=None if mod.get("mask_prob_min") is None else float(mod["mask_prob_min"]),
            mask_length=int(get(mod, "mask_length", 5)),
            mask_prob_adjust=float(get(mod, "mask_prob_adjust", 0.0)),
            inverse_mask=bool(get(mod, "inverse_mask", False)),
            keep_masked_pct=float(get(mod, "keep_masked_pct", 0.0)),
            mask_noise_std=float(get(mod, "mask_noise_std", 0.01)),
            encoder_zero_mask=bool(get(mod, "encoder_zero_mask", True)),
            mask_dropout=float(get(mod, "mask_dropout", 0.0)),
            add_masks=bool(get(mod, "add_masks", False)),
            decoder_dim=int(get(dec, "decoder_dim", 384)),
            decoder_groups=int(get(dec, "decoder_groups", 16)),
            decoder_kernel=int(get(dec, "decoder_kernel", 5)),
            decoder_layers=int(get(dec, "decoder_layers", 5)),
            decoder_input_dropout=float(get(dec, "input_dropout", 0.1)),
            decoder_residual=bool(get(dec, "decoder_residual", True)),
            projection_layers=int(get(dec, "projection_layers", 1)),
            projection_ratio=float(get(dec, "projection_ratio", 2.0)),
            add_positions_masked=bool(get(dec, "add_positions_masked", False)),
            add_positions_all=bool(get(dec, "add_positions_all", False)),
            seed=int(get(model_cfg, "seed", 1)),
        )

    @staticmethod
    def unapplied_fairseq_options(model_cfg: dict, modality: str) -> list[str]:
        """Notes for the stochastic regularisers of a fairseq config that d2v's pretraining step
        does not apply (layer drop, drop path, input dropouts): training differs from upstream there."""
        sub = {"IMAGE": "image", "AUDIO": "audio", "TEXT": "text"}[modality.upper().replace("MODALITY.", "")]
        mod = (model_cfg.get("modalities") or {}).get(sub) or {}
        notes = []
        for where, cfg, keys in (
            ("model", model_cfg, ("layerdrop", "start_drop_path_rate", "end_drop_path_rate", "dropout_input")),
            (f"model.modalities.{sub}", mod, ("prenet_layerdrop", "prenet_dropout", "start_drop_path_rate",
                                              "end_drop_path_rate")),
        ):
            for key in keys:
                if cfg.get(key):
                    notes.append(f"note: {where}.{key}={cfg[key]} is not applied by d2v's pretraining step")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Data2Vec2PretrainingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown data2vec 2.0 pretraining option(s) {unknown}")
        return cls(**values)

    # ------------------------------------------------------------------- formulas
    def tau(self, step: int) -> float:
        """EMA decay of the teacher update after optimizer update ``step`` (fairseq's
        ``set_num_updates``: annealed linearly, then ``ema_end_decay``; constant when equal)."""
        start, end = float(self.ema_decay), float(self.ema_end_decay)
        if start == end:
            return start
        if step >= self.ema_anneal_end_step:
            return end
        return end - (end - start) * (1 - step / self.ema_anneal_end_step)  # upstream's float expression

    def loss_scale_for(self, hidden: int) -> float:
        return 1.0 / float(np.sqrt(hidden)) if self.loss_scale is None else float(self.loss_scale)

    def projection_dims(self, hidden: int) -> list[tuple[int, int]]:
        """(in, out) of the decoder's projection Linears (Decoder1d: ratio-widened first, GELUs
        between; Decoder2d: one Linear)."""
        if self.modality == "vision":
            return [(self.decoder_dim, hidden)]
        dims, cur = [], self.decoder_dim
        for i in range(self.projection_layers - 1):
            nxt = int(cur * self.projection_ratio) if i == 0 else cur
            dims.append((cur, nxt))
            cur = nxt
        return dims + [(cur, hidden)]


# ---------------------------------------------------------------------------- weights


def decoder_shapes(pcfg: Data2Vec2PretrainingConfig, hidden: int) -> dict[str, tuple[int, ...]]:
    """Canonical decoder names (``decoder.layers.{i}.conv.*``, ``decoder.projection.{j}.*``) and shapes."""
    k, g = pcfg.decoder_kernel, pcfg.decoder_groups
    out: dict[str, tuple[int, ...]] = {}
    for i in range(pcfg.decoder_layers):
        cin = hidden if i == 0 else pcfg.decoder_dim
        kernel = (k, k) if pcfg.modality == "vision" else (k,)
        out[f"decoder.layers.{i}.conv.weight"] = (pcfg.decoder_dim, cin // g, *kernel)
        out[f"decoder.layers.{i}.conv.bias"] = (pcfg.decoder_dim,)
    for j, (cin, cout) in enumerate(pcfg.projection_dims(hidden)):
        out[f"decoder.projection.{j}.weight"] = (cout, cin)
        out[f"decoder.projection.{j}.bias"] = (cout,)
    return out


def decoder_fairseq_name(name: str, pcfg: Data2Vec2PretrainingConfig, hidden: int) -> str:
    """fairseq name (inside the modality encoder) of a canonical decoder tensor."""
    parts = name.split(".")
    if parts[1] == "layers":  # decoder.layers.i.conv.leaf -> decoder.blocks.i.0.leaf
        return f"decoder.blocks.{parts[2]}.0.{parts[4]}"
    j, leaf = int(parts[2]), parts[3]
    if len(pcfg.projection_dims(hidden)) == 1:
        return f"decoder.proj.{leaf}"
    return f"decoder.proj.{2 * j}.{leaf}"  # Sequential(Linear, GELU, Linear, ...)


_BLOCK_KEYS = {
    "attention.qkv_proj": "attn.qkv", "attention.out_proj": "attn.proj", "layer_norm": "norm1",
    "final_layer_norm": "norm2", "feed_forward.intermediate_dense": "mlp.fc1", "feed_forward.output_dense": "mlp.fc2",
}


def _block_key(rest: str) -> str:
    module, leaf = rest.rsplit(".", 1)
    return f"{_BLOCK_KEYS[module]}.{leaf}"


def encoder_fairseq_key(name: str, config) -> str:
    """The ``Data2VecMultiModel`` state key of a canonical encoder tensor (``Data2Vec2*Model``
    names), the inverse of ``d2v_common.checkpoints.fairseq.canonical_name`` (checked against it)."""
    modality = {"Data2Vec2VisionConfig": "IMAGE", "Data2Vec2AudioConfig": "AUDIO", "Data2Vec2TextConfig": "TEXT"}[
        type(config).__name__
    ]
    m = f"modality_encoders.{modality}."
    parts = name.split(".")
    pre_ln = bool(getattr(config, "conv_pos_pre_layer_norm", False))
    if name.startswith("encoder.layers."):
        key = f"blocks.{parts[2]}.{_block_key('.'.join(parts[3:]))}"
    elif name.startswith("encoder.prenet_layers."):
        key = f"{m}context_encoder.blocks.{parts[2]}.{_block_key('.'.join(parts[3:]))}"
    elif name.startswith("encoder.final_layer_norm."):
        key = f"norm.{parts[-1]}"
    elif name.startswith("encoder.layer_norm."):
        key = f"{m}context_encoder.norm.{parts[-1]}"
    elif name in ("encoder.extra_tokens", "encoder.alibi_scale"):
        key = m + parts[1]
    elif name.startswith("embeddings.patch_embeddings.projection."):
        dense = getattr(config, "patch_embed_dim", None) not in (None, config.hidden_size)
        key = f"{m}local_encoder.{'0.' if dense else ''}proj.{parts[-1]}"
    elif name.startswith("embeddings.patch_embeddings.dense."):
        key = f"{m}local_encoder.1.{parts[-1]}"
    elif name == "embeddings.position_embeddings":
        key = f"{m}fixed_positional_encoder.positions"
    elif name.startswith("feature_extractor.conv_layers."):
        if parts[3] == "conv":
            key = f"{m}local_encoder.conv_layers.{parts[2]}.0.{parts[-1]}"
        else:  # LayerNorm wrapped with its transposes ("layer_norm" mode), or the GroupNorm itself
            inner = "1." if config.feat_extract_norm == "layer" else ""
            key = f"{m}local_encoder.conv_layers.{parts[2]}.2.{inner}{parts[-1]}"
    elif name.startswith("feature_projection."):
        key = f"{m}project_features.{1 if parts[1] == 'layer_norm' else 2}.{parts[-1]}"
    elif name.startswith("encoder.pos_conv_layer_norm."):
        key = f"{m}relative_positional_encoder.0.{parts[-1]}"
    elif name.startswith("encoder.pos_conv_embed.layers."):
        key = f"{m}relative_positional_encoder.{'1.' if pre_ln else ''}{int(parts[3]) + 1}.0.{parts[-1]}"
    elif name.startswith("embeddings."):
        module = {"word_embeddings": "embed_tokens", "position_embeddings": "embed_positions",
                  "layer_norm": "layernorm_embedding"}[parts[1]]
        key = f"{m}local_encoder.{module}.{parts[-1]}"
    else:
        raise ValueError(f"no fairseq name for {name!r}")
    if fairseq.canonical_name(key, modality, pre_ln) != name:  # one mapping, read both ways
        raise ValueError(f"fairseq name {key!r} of {name!r} does not map back")
    return key


def fairseq_keys(student_names, pcfg: Data2Vec2PretrainingConfig, config) -> dict[str, str]:
    """``{pretraining array name: fairseq key}`` for a model's tensors (student under its prefix,
    ``decoder.*``, ``teacher.*`` as ``_ema.<key>``): how upstream names each, for any model."""
    modality = {"vision": "IMAGE", "audio": "AUDIO", "text": "TEXT"}[pcfg.modality]
    prefix = STUDENT_PREFIX[pcfg.modality] + "."
    out = {prefix + n: encoder_fairseq_key(n, config) for n in student_names}
    for name in decoder_shapes(pcfg, config.hidden_size):
        out[name] = f"modality_encoders.{modality}." + decoder_fairseq_name(name, pcfg, config.hidden_size)
    for name in teacher_names(student_names, pcfg):
        key = encoder_fairseq_key(name, config)
        out["teacher." + name] = "_ema." + (key[len("blocks."):] if pcfg.ema_encoder_only else key)
    return out


# Student tensors that belong to the modality's front end ("local encoder" upstream): the teacher
# has its own copy only with ema_local_encoder.
_LOCAL_PREFIXES = {
    "vision": ("embeddings.patch_embeddings.",),
    "audio": ("feature_extractor.", "feature_projection."),
    "text": ("embeddings.",),
}


def teacher_names(student_names, pcfg: Data2Vec2PretrainingConfig) -> list[str]:
    """The student tensors the EMA teacher holds a copy of (upstream ``make_target_model``):
    the main blocks only with ``ema_encoder_only``; else everything but the decoder and, without
    ``ema_local_encoder``, the front end."""
    out = []
    for name in student_names:
        if pcfg.ema_encoder_only:
            if name.startswith("encoder.layers."):
                out.append(name)
        elif pcfg.ema_local_encoder or not name.startswith(_LOCAL_PREFIXES[pcfg.modality]):
            out.append(name)
    return out


def is_local_name(name: str, modality: str) -> bool:
    return name.startswith(_LOCAL_PREFIXES[modality])


# --------------------------------------------------------------------------- fairseq IO


@dataclass
class FairseqPretraining:
    """A fairseq data2vec 2.0 pretraining checkpoint in canonical form.

    ``arrays``: ``<student prefix>.<name>`` (the encoder, names as ``Data2Vec2*Model``, prefix
    ``STUDENT_PREFIX``), ``decoder.*``, ``teacher.<name>``; ``fairseq_names``: the checkpoint key of each (teacher keys written
    ``_ema.<key>``); ``num_updates``: the trainer's update count.
    """

    config: Any
    pretraining_config: Data2Vec2PretrainingConfig
    arrays: dict[str, np.ndarray]
    fairseq_names: dict[str, str]
    num_updates: int
    report: Any
    model_cfg: dict = dataclasses.field(default_factory=dict)

    @property
    def fairseq(self) -> dict:
        """What writing the model back as a fairseq checkpoint needs (``write_fairseq_pretraining``)."""
        return {"names": dict(self.fairseq_names), "model_cfg": self.model_cfg}


def _not_pretraining(file: str, kind: str) -> fairseq.FairseqCheckpointError:
    return fairseq.FairseqCheckpointError(
        f"{file}: a fairseq data2vec 2.0 {kind} checkpoint, which has no decoder and no EMA teacher; the "
        "Data2Vec2*ForPreTraining classes need a pretraining (data2vec_multi) checkpoint. Load this one with "
        "the Data2Vec2* model classes instead."
    )


def read_fairseq_pretraining(path: str | os.PathLike) -> FairseqPretraining:
    """Student, decoder and EMA teacher of a fairseq ``data2vec_multi`` checkpoint.

    The encoder goes through ``d2v_common.checkpoints.fairseq.convert_fairseq`` (config, names, checks);
    the decoder and the teacher (``_ema``, which upstream stores as a plain dict) are read here.

    Raises:
        FairseqCheckpointError: not a pretraining checkpoint (a fine-tuned one has neither
            decoder nor teacher), no ``_ema``, or tensors that do not fit the config.
    """
    file = fairseq.fairseq_checkpoint_file(path) or os.fspath(path)
    ckpt = fairseq.read_fairseq_checkpoint(file)  # unpickled once: the encoder, decoder and teacher all come from it
    config, _arch, encoder, report = fairseq.convert_fairseq(file, checkpoint=ckpt)
    return fairseq_pretraining_from(file, ckpt, config, encoder, report)


def fairseq_pretraining_from(file: str, ckpt: dict, config, encoder: dict[str, np.ndarray],
                             report: fairseq.ConversionReport) -> FairseqPretraining:
    """``read_fairseq_pretraining`` on a checkpoint read and converted already: ``ckpt`` the
    unpickled dict, ``config, encoder, report`` what ``convert_fairseq`` made of it."""
    if report.kind != "pretraining":
        raise _not_pretraining(file, report.kind)
    model_cfg = ckpt["cfg"]["model"]
    state = ckpt["model"]
    modality = {"Data2Vec2VisionConfig": "IMAGE", "Data2Vec2AudioConfig": "AUDIO", "Data2Vec2TextConfig": "TEXT"}[
        type(config).__name__
    ]
    pcfg = Data2Vec2PretrainingConfig.from_fairseq(model_cfg, modality)
    report.notes.extend(Data2Vec2PretrainingConfig.unapplied_fairseq_options(model_cfg, modality))
    pre_ln = bool(getattr(config, "conv_pos_pre_layer_norm", False))
    student = STUDENT_PREFIX[pcfg.modality] + "."
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for key in state:
        if key == "_ema":
            continue
        canonical = fairseq.canonical_name(key, modality, pre_ln)
        if canonical in encoder:
            arrays[student + canonical] = encoder[canonical]
            names[student + canonical] = key
    missing = sorted(set(encoder) - {k[len(student):] for k in arrays})
    if missing:  # convert_fairseq reshapes nothing but alibi_scale; every tensor has its key
        raise fairseq.FairseqCheckpointError(f"{file}: encoder tensors without a fairseq key: {missing[:8]}")

    hidden = config.hidden_size
    mod_prefix = f"modality_encoders.{modality}."
    for name, shape in decoder_shapes(pcfg, hidden).items():
        key = mod_prefix + decoder_fairseq_name(name, pcfg, hidden)
        if key not in state:
            raise fairseq.FairseqCheckpointError(
                f"{file}: no decoder tensor {key}: a pretraining class needs the checkpoint's decoder "
                "(fine-tuned checkpoints have none)"
            )
        arrays[name] = fairseq.tensor_to_numpy(state[key])
        names[name] = key
        if tuple(arrays[name].shape) != shape:
            raise fairseq.FairseqCheckpointError(
                f"{file}: decoder tensor {key} has shape {tuple(arrays[name].shape)}, the config gives {shape}"
            )
    extra_decoder = sorted(k for k in state if k.startswith(mod_prefix + "decoder.") and k not in names.values())
    if extra_decoder:
        raise fairseq.FairseqCheckpointError(f"{file}: decoder tensors the config does not explain: {extra_decoder}")

    ema = state.get("_ema")
    if not isinstance(ema, dict) or not ema:
        raise fairseq.FairseqCheckpointError(
            f"{file}: no EMA teacher ('_ema' in the model state); was it saved with skip_ema or ema_decay=1?"
        )
    expected = set(teacher_names(list(encoder), pcfg))
    got = set()
    for key, value in ema.items():
        full = f"blocks.{key}" if pcfg.ema_encoder_only else key
        canonical = fairseq.canonical_name(full, modality, pre_ln)
        if canonical is None or canonical not in expected:
            raise fairseq.FairseqCheckpointError(f"{file}: EMA teacher tensor _ema.{key} has no place in the teacher")
        array = fairseq.tensor_to_numpy(value)
        if canonical == "encoder.alibi_scale" and array.ndim == 4:
            array = array[None]  # as convert_fairseq: upstream's upgrade step
        if array.shape != encoder[canonical].shape:
            raise fairseq.FairseqCheckpointError(
                f"{file}: _ema.{key} has shape {array.shape}, the student's {encoder[canonical].shape}"
            )
        arrays[f"teacher.{canonical}"] = array
        names[f"teacher.{canonical}"] = f"_ema.{key}"
        got.add(canonical)
    if got != expected:
        raise fairseq.FairseqCheckpointError(
            f"{file}: the EMA teacher lacks {sorted(expected - got)[:8]} (ema_encoder_only="
            f"{pcfg.ema_encoder_only}, ema_local_encoder={pcfg.ema_local_encoder})"
        )
    history = ckpt.get("optimizer_history") or [{}]
    num_updates = int(history[-1].get("num_updates", 0) or 0)
    plain_cfg = json.loads(json.dumps(model_cfg, default=str))  # enums as their names, as fairseq prints them
    return FairseqPretraining(config, pcfg, arrays, names, num_updates, report, plain_cfg)


def write_fairseq_pretraining(path: str | os.PathLike, arrays: dict[str, np.ndarray], fairseq: dict,
                              num_updates: int = 0) -> str:
    """A fairseq trainer ``checkpoint.pt`` (``cfg.model``, the student and decoder under their
    fairseq keys, the teacher as the ``_ema`` dict) from canonical ``arrays``; ``fairseq`` holds
    the names and model config read from the source checkpoint (``FairseqPretraining.fairseq``).
    Written beside the target first, then renamed: a failed write leaves nothing behind."""
    from d2v_common.checkpoints.formats import import_torch

    torch = import_torch()
    names = fairseq["names"]
    missing = sorted(set(arrays) - set(names))
    if missing:
        raise ValueError(f"no fairseq name for {missing[:8]}: was the model read from a fairseq checkpoint?")
    state, ema = {}, {}
    for name, key in names.items():
        tensor = torch.from_numpy(np.require(arrays[name], requirements="C")).clone()
        if key.startswith("_ema."):
            ema[key[len("_ema."):]] = tensor
        else:
            state[key] = tensor
    state["_ema"] = ema
    ckpt = {
        "args": None,
        "cfg": {"model": fairseq["model_cfg"]},
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "num_updates": int(num_updates)}],
        "task_state": {},
        "extra_state": {},
    }
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ------------------------------------------------------------------------ saved folders


def pretraining_json(pcfg: Data2Vec2PretrainingConfig, architecture: str, num_updates: int,
                     fairseq: dict | None = None) -> bytes:
    """``d2v_pretraining.json``: the recipe, the update count and, for a model read from a
    fairseq checkpoint, its tensor names and model config (so it can be written back)."""
    body = {"architecture": architecture, "num_updates": int(num_updates), "pretraining": pcfg.to_dict()}
    if fairseq:
        body["fairseq"] = fairseq
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_pretraining_json(directory: str | os.PathLike, architecture: str) -> tuple[Data2Vec2PretrainingConfig, int, dict | None]:
    path = os.path.join(os.fspath(directory), PRETRAINING_FILE)
    if not os.path.isfile(path):
        raise OSError(
            f"{directory} has no {PRETRAINING_FILE}: it is not a saved data2vec 2.0 pretraining model (no decoder, "
            "no EMA teacher). Load a fairseq pretraining checkpoint.pt, or a folder written by "
            f"{architecture}.save_pretrained."
        )
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    if body.get("architecture") != architecture:
        raise ValueError(f"{path} is for {body.get('architecture')!r}, not {architecture}")
    return Data2Vec2PretrainingConfig.from_dict(body["pretraining"]), int(body.get("num_updates", 0)), body.get("fairseq")


# ------------------------------------------------------------------- both frameworks' classes
# What the PyTorch and Keras pretraining classes do alike around their step: the recipe they
# accept, the arrays they load, the folder they write, the fairseq file they write back.

FAIRSEQ_MODALITY = {v: k for k, v in MODALITIES.items()}  # "vision" -> "IMAGE" (upstream's loss names)
CONFIG_FILE = "config.json"


def resolve_pretraining_config(pretraining_config, modality: str, config) -> Data2Vec2PretrainingConfig:
    """The recipe a pretraining class is built with: None (the defaults), a dict of fields or a
    ``Data2Vec2PretrainingConfig``, for ``modality`` and fitting the backbone ``config``."""
    pcfg = pretraining_config
    if pcfg is None:
        pcfg = Data2Vec2PretrainingConfig(modality=modality)
    elif isinstance(pcfg, dict):
        pcfg = Data2Vec2PretrainingConfig(modality=modality, **pcfg)
    if not isinstance(pcfg, Data2Vec2PretrainingConfig):
        raise TypeError(f"pretraining_config must be a Data2Vec2PretrainingConfig or a dict, got {type(pcfg).__name__}")
    if pcfg.modality != modality:
        raise ValueError(f"this is a {modality} model but the pretraining config is for {pcfg.modality}")
    if pcfg.cls_loss > 0 and config.num_extra_tokens == 0:
        raise ValueError("cls_loss > 0 regresses the last extra token: the config needs num_extra_tokens >= 1")
    return pcfg


def check_pretraining_array_names(class_name: str, expected, got) -> None:
    """``load_pretraining_arrays``: exactly the model's names (student, decoder, teacher)."""
    expected, got = set(expected), set(got)
    if got != expected:
        raise ValueError(
            f"{class_name}: the arrays do not fit the model: missing {sorted(expected - got)[:8]}, "
            f"unexpected {sorted(got - expected)[:8]}"
        )


def check_decoder_shape(name: str, got: tuple, expected: tuple) -> None:
    if tuple(got) != tuple(expected):
        raise ValueError(f"{name}: got shape {tuple(got)}, expected {tuple(expected)}")


def save_pretraining_folder(directory: str | os.PathLike, arrays: dict[str, np.ndarray], config,
                            pcfg: Data2Vec2PretrainingConfig, architecture: str, num_updates: int,
                            fairseq: dict | None) -> list[str]:
    """A pretraining class's ``save_pretrained``: every array (``model.safetensors``), the
    backbone's ``config.json`` and ``d2v_pretraining.json``; staged, config files last."""
    from d2v_common.checkpoints.formats import write_checkpoint

    config.architectures = [architecture]
    extra = {
        PRETRAINING_FILE: pretraining_json(pcfg, architecture, num_updates, fairseq),
        CONFIG_FILE: config.to_json_string().encode("utf-8"),
    }
    return write_checkpoint(directory, arrays, None, ("safetensors",), extra_files=extra)


def save_fairseq_pretraining(class_name: str, path: str | os.PathLike, arrays: dict[str, np.ndarray],
                             fairseq: dict | None, num_updates: int) -> str:
    """A pretraining class's ``save_fairseq``: refused for a model not read from fairseq."""
    if not fairseq:
        raise ValueError(
            f"{class_name}.save_fairseq needs the fairseq names and config of the checkpoint the model "
            "came from; this model was not read from a fairseq checkpoint (use save_pretrained)"
        )
    return write_fairseq_pretraining(path, arrays, fairseq, num_updates)


# ------------------------------------------------------------------------------ loading


def pretraining_spec(config, pcfg: Data2Vec2PretrainingConfig, architecture: str) -> WeightSpec:
    """Every tensor of a pretraining model: the student (under ``STUDENT_PREFIX``), ``decoder.*``
    and ``teacher.*``. Every one is required (no base prefix: nothing counts as a fresh head)."""
    student = weight_spec(config, ARCHITECTURES[pcfg.modality][1])
    prefix = STUDENT_PREFIX[pcfg.modality] + "."
    params = [dataclasses.replace(p, name=prefix + p.name) for p in student]
    conv = "conv2d" if pcfg.modality == "vision" else "conv1d"
    for name, shape in decoder_shapes(pcfg, config.hidden_size).items():
        leaf = name.rsplit(".", 1)[1]
        params.append(ParamSpec(name, shape, conv if ".conv." in name else "linear", leaf,
                                normal(0.02) if leaf == "weight" else ZEROS))
    params += [dataclasses.replace(student[n], name="teacher." + n) for n in teacher_names(student.names(), pcfg)]
    return WeightSpec(architecture, student.family, "", params)


@dataclass
class LoadedPretraining:
    """What ``load_pretraining`` returns: the backbone's ``config``, the ``pretraining_config``,
    every array of ``pretraining_spec`` (student, decoder, teacher), the ``LoadReport``, the
    trainer's ``num_updates`` and ``fairseq`` (the source's names and model config, or None)."""

    config: Any
    pretraining_config: Data2Vec2PretrainingConfig
    arrays: dict
    report: LoadReport
    num_updates: int = 0
    fairseq: dict | None = None


def _companion_files(available: set[str]) -> list[str]:
    """A hub repository's ``d2v_pretraining.json`` comes along with config and weights."""
    return [PRETRAINING_FILE] if PRETRAINING_FILE in available else []


def load_pretraining(name_or_path: str | os.PathLike, options: LoadOptions = LoadOptions(), *,
                     architecture: str, config_class: type, seed: int | None = None) -> LoadedPretraining:
    """A pretraining model's config, recipe and arrays from a fairseq ``data2vec_multi``
    ``checkpoint.pt`` (or a folder holding one), a folder written by the pretraining class's
    ``save_pretrained`` (or its ``model.safetensors``) or a hub id holding one, through
    ``open_checkpoint``: the source resolved once, each file read once (a fairseq file
    unpickled once: its encoder, decoder and EMA teacher come from the same read).

    Args:
        name_or_path: the checkpoint.
        options: ``LoadOptions`` (format preference, strictness, hub keywords).
        architecture: the pretraining class's name (checked against ``d2v_pretraining.json``).
        config_class: its backbone's config class (a checkpoint of another modality is refused).
        seed: seed of tensors re-initialised with ``ignore_mismatched_sizes``.

    Raises:
        FairseqCheckpointError (a ValueError): a fine-tuned fairseq checkpoint (no decoder, no
            teacher), or options d2v does not implement.
        TypeError: a checkpoint of another modality.
        OSError: a folder without ``d2v_pretraining.json`` (a plain model checkpoint).
    """
    request = OpenRequest(extra=_companion_files, keep_fairseq_checkpoint=True)
    opened = open_checkpoint(name_or_path, options, request)
    if opened.fairseq_checkpoint is not None:
        raw, opened.fairseq_checkpoint = opened.fairseq_checkpoint, None  # the arrays below own the tensors now
        config = opened.read_config(config_class)  # another modality: a TypeError
        source = fairseq_pretraining_from(opened.location, raw, config, opened.converted[1], opened.conversion_report)
        del raw
        opened.converted = (config, source.arrays)  # matched below like any checkpoint's arrays
        pcfg, num_updates, origin, notes = (source.pretraining_config, source.num_updates, source.fairseq,
                                            source.report.notes)
    else:
        pcfg, num_updates, origin = read_pretraining_json(opened.folder, architecture)
        config = opened.read_config(config_class)
        opened.check_fits(config, options.ignore_mismatched_sizes)
        notes = []
    arrays, report = opened.load_arrays(pretraining_spec(config, pcfg, architecture), options, seed)
    report.notes.extend(notes)
    return LoadedPretraining(config, pcfg, arrays, report, num_updates, origin)


# ------------------------------------------------------------------------------ masks
# numpy ports of upstream's samplers (fairseq/data/data_utils.py compute_block_mask_2d and
# compute_mask_indices, data2vec2 random_masking), drawing from one seeded Generator instead of
# torch's / numpy's global state: the same distributions, not the same draws.


def load_pretraining_for(cls, name_or_path: str | os.PathLike, checkpoint_format, ignore_mismatched_sizes,
                         check_finite, seed, hub_options: dict) -> LoadedPretraining:
    """``load_pretraining`` for a pretraining class's ``from_pretrained`` (either framework):
    the hub keywords taken out of ``hub_options``; any other keyword is a TypeError."""
    hub = pop_hub_options(hub_options)
    if hub_options:
        raise TypeError(f"{cls.__name__}.from_pretrained got unexpected keyword(s) {sorted(hub_options)}")
    options = LoadOptions(checkpoint_format, ignore_mismatched_sizes, check_finite, hub)
    return load_pretraining(name_or_path, options, architecture=cls.architecture, config_class=cls.config_class,
                            seed=seed)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def block_mask_2d(batch: int, length: int, mask_prob: float, mask_length: int, mask_prob_adjust: float = 0.0,
                  inverse_mask: bool = False, mask_dropout: float = 0.0, rng=None) -> np.ndarray:
    """Images: (batch, length) bool over a square patch grid. ``int(L * (p + adjust) / m^2 *
    (1 + dropout))`` block centres per row (with repeats), each a ``mask_length`` square clamped
    to the grid; then positions are randomly unmasked / masked until every row has exactly
    ``int(L * p)``; with ``inverse_mask`` p is ``1 - mask_prob`` and the result is inverted
    (the blocks are what the student *sees*)."""
    rng = _rng(rng)
    side = int(length**0.5)
    if side * side != length or mask_length < 2:
        raise ValueError(f"block masks need a square grid and mask_length >= 2, got {length} patches, {mask_length}")
    p = 1 - mask_prob if inverse_mask else mask_prob
    centres = int(length * ((p + mask_prob_adjust) / mask_length**2) * (1 + mask_dropout))
    mask = np.zeros((batch, side, side), dtype=bool)
    offsets = np.arange(mask_length) - mask_length // 2
    for b in range(batch):
        flat = rng.integers(0, length, size=centres)
        rows, cols = np.divmod(flat, side)
        r = np.clip(rows[:, None, None] + offsets[None, :, None], 0, side - 1)
        c = np.clip(cols[:, None, None] + offsets[None, None, :], 0, side - 1)
        mask[b, np.broadcast_to(r, (centres, mask_length, mask_length)),
             np.broadcast_to(c, (centres, mask_length, mask_length))] = True
    mask = mask.reshape(batch, length)
    target = int(length * p)
    for row in mask:
        n = int(row.sum())
        if n > target:
            row[rng.choice(np.flatnonzero(row), n - target, replace=False)] = False
        elif n < target:
            row[rng.choice(np.flatnonzero(~row), target - n, replace=False)] = True
    return ~mask if inverse_mask else mask


def span_mask(batch: int, length: int, mask_prob: float, mask_length: int, padding=None, mask_dropout: float = 0.0,
              add_masks: bool = False, rng=None) -> np.ndarray:
    """Audio / text spans (upstream ``compute_mask_indices``, static lengths, ``min_masks=1``,
    ``require_same_masks``): per row of ``sz`` valid positions, ``max(1, int(p * sz / m + u))``
    span starts drawn without replacement from ``sz - m`` (fewer when they would not fit), the
    spans cut at ``sz``; then every row reduced to the smallest count (``add_masks``: raised to
    the largest), then ``mask_dropout`` of each row's masked positions unmasked."""
    rng = _rng(rng)
    pad = np.zeros((batch, length), dtype=bool) if padding is None else np.asarray(padding, dtype=bool)
    spans = []
    for i in range(batch):
        sz = int(length - pad[i].sum())
        num = max(1, int(mask_prob * sz / float(mask_length) + rng.random()))
        min_len = mask_length
        if sz - min_len <= num:
            min_len = sz - num - 1
        if sz - min_len < num or sz - min_len <= 0:
            raise ValueError(f"row {i} has {sz} valid positions: too few to draw {num} spans of {mask_length}")
        starts = rng.choice(sz - min_len, num, replace=False)
        idx = (starts[:, None] + np.arange(mask_length)[None, :]).reshape(-1)
        idx = np.unique(idx[idx < sz])
        if len(idx) >= sz:
            raise ValueError(f"row {i}: the spans cover all {sz} valid positions; lower mask_prob or mask_length")
        spans.append(idx)
    target = (max if add_masks else min)(len(m) for m in spans)
    mask = np.zeros((batch, length), dtype=bool)
    for i, idx in enumerate(spans):
        if len(idx) > target:
            idx = rng.choice(idx, target, replace=False)
        mask[i, idx] = True
        if len(idx) < target:
            mask[i, rng.choice(np.flatnonzero(~mask[i]), target - len(idx), replace=False)] = True
        if mask_dropout > 0:
            masked = np.flatnonzero(mask[i])
            holes = int(np.rint(len(masked) * mask_dropout))
            mask[i, rng.choice(masked, holes, replace=False)] = False
    return mask


def random_mask(batch: int, length: int, mask_prob: float, rng=None) -> np.ndarray:
    """``mask_length == 1`` (upstream ``random_masking``): every row masks ``L - int(L * (1 - p))``
    positions chosen uniformly (padding included, as upstream)."""
    rng = _rng(rng)
    keep = int(length * (1 - mask_prob))
    order = np.argsort(rng.random((batch, length)), axis=1)
    mask = np.ones((batch, length), dtype=bool)
    np.put_along_axis(mask, order[:, :keep], False, axis=1)
    return mask


def sample_mask(pcfg: Data2Vec2PretrainingConfig, rows: int, length: int, padding=None, rng=None) -> np.ndarray:
    """The mask upstream draws when none is given, for ``rows`` (= batch * clone_batch) rows:
    ``padding`` (rows, length) bool True = padded (audio, text). Images with ``mask_length > 1``
    get block masks, ``mask_length == 1`` random masks, the rest spans (``inverse_mask``:
    spans of what is kept)."""
    rng = _rng(rng)
    p = pcfg.mask_prob
    if pcfg.mask_prob_min is not None and 0 <= pcfg.mask_prob_min < p:
        p = float(rng.uniform(pcfg.mask_prob_min, p))
    if pcfg.mask_length == 1:
        return random_mask(rows, length, p, rng)
    if pcfg.modality == "vision":
        return block_mask_2d(rows, length, p, pcfg.mask_length, pcfg.mask_prob_adjust, pcfg.inverse_mask,
                             pcfg.mask_dropout, rng)
    if pcfg.inverse_mask:
        p = 1 - p
    mask = span_mask(rows, length, p, pcfg.mask_length, padding, pcfg.mask_dropout, pcfg.add_masks, rng)
    return ~mask if pcfg.inverse_mask else mask


# ----------------------------------------------------------------------------- checks


def check_precomputed_mask(shape: tuple, dtype: str, batch: int, clone_batch: int, length: int) -> None:
    """A given mask: bool, (batch * clone_batch, length), every row masking as many positions."""
    if "bool" not in dtype:
        raise TypeError(f"precomputed_mask must be a bool tensor (True = masked), got {dtype}")
    if len(shape) != 2 or shape[1] != length:
        raise ValueError(f"precomputed_mask must have shape (batch * clone_batch, {length}), got {tuple(shape)}")
    rows = shape[0]
    if rows % clone_batch:
        raise ValueError(
            f"precomputed_mask has {rows} rows, which clone_batch={clone_batch} does not divide: it needs "
            f"batch x clone_batch rows (sample i's clones at rows i*{clone_batch} .. i*{clone_batch}+{clone_batch - 1})"
        )
    if rows != batch * clone_batch:
        raise ValueError(
            f"precomputed_mask has {rows} rows; the batch of {batch} needs batch x clone_batch = "
            f"{batch} x {clone_batch} = {batch * clone_batch} rows"
        )


def check_mask_counts(mask: np.ndarray) -> None:
    """Upstream removes the masked positions and stacks the rest: every row must mask the same
    number of positions, at least one and not all."""
    counts = np.asarray(mask).sum(axis=1)
    if counts.size and (counts != counts[0]).any():
        raise ValueError(
            f"every row of precomputed_mask must mask the same number of positions (the masked ones are removed "
            f"and the rest stacked); got {sorted(set(counts.tolist()))}"
        )
    if counts.size and (counts[0] == 0 or counts[0] == mask.shape[1]):
        raise ValueError(f"precomputed_mask masks {counts[0]} of {mask.shape[1]} positions per row: need 1 .. T-1")


def _introsort_order(keys: list[int]) -> list[int]:
    """The order libstdc++'s ``std::sort`` (introsort: median-of-3 pivots, unguarded partitions,
    insertion sort of 16-element runs) leaves ``range(len(keys))`` in, comparing ``keys`` only:
    what torch's CPU ``argsort`` (not stable) gives."""
    a = list(range(len(keys)))

    def key(i):
        return keys[a[i]]

    def median_to_first(x, y, z, first):
        kx, ky, kz = key(x), key(y), key(z)
        if kx < ky:
            m = y if ky < kz else (z if kx < kz else x)
        else:
            m = x if kx < kz else (z if ky < kz else y)
        a[first], a[m] = a[m], a[first]

    def partition(first, last, pivot):
        kp = key(pivot)
        while True:
            while key(first) < kp:
                first += 1
            last -= 1
            while kp < key(last):
                last -= 1
            if not first < last:
                return first
            a[first], a[last] = a[last], a[first]
            first += 1

    def introsort(first, last, depth):
        while last - first > 16:
            if depth == 0:  # std::sort would heapsort this range; not reached by 0/1 keys
                a[first:last] = sorted(a[first:last], key=lambda i: keys[i])
                return
            depth -= 1
            median_to_first(first + 1, first + (last - first) // 2, last - 1, first)
            cut = partition(first + 1, last, first)
            introsort(cut, last, depth)
            last = cut

    def linear_insert(last):
        value = a[last]
        while keys[value] < key(last - 1):
            a[last] = a[last - 1]
            last -= 1
        a[last] = value

    def insertion(first, last):
        for i in range(first + 1, last):
            if key(i) < key(first):
                a[first:i + 1] = [a[i]] + a[first:i]
            else:
                linear_insert(i)

    n = len(a)
    if n > 1:
        introsort(0, n, 2 * (n.bit_length() - 1))
        insertion(0, min(n, 16))
        for i in range(16, n):
            linear_insert(i)
    return a


def upstream_mask_order(mask) -> np.ndarray:
    """(rows, T) int64: per row, the positions in the order upstream's ``mask.argsort(dim=1)``
    (torch's CPU sort, not stable) gives, unmasked first. The order of equal keys decides which
    masked positions the student keeps with ``keep_masked_pct``; a stable sort keeps others once
    a row is longer than 16."""
    mask = np.asarray(mask, dtype=bool)
    return np.array([_introsort_order(row.astype(np.int64).tolist()) for row in mask], dtype=np.int64).reshape(
        mask.shape)


def kept_positions(mask: np.ndarray, keep_masked_pct: float) -> np.ndarray:
    """(rows, T) bool: the positions the student keeps for ``mask`` (the unmasked ones plus the
    ``keep_masked_pct`` share of the masked that come first in upstream's order)."""
    mask = np.asarray(mask, dtype=bool)
    kept = np.zeros_like(mask)
    if mask.size:
        count = keep_count(mask.shape[1], int(mask[0].sum()), keep_masked_pct)
        np.put_along_axis(kept, upstream_mask_order(mask)[:, :count], True, axis=1)
    return kept


def keep_count(length: int, masked: int, keep_masked_pct: float) -> int:
    """Positions the student keeps: the unmasked ones plus ``keep_masked_pct`` of the masked."""
    keep = length - masked
    if keep_masked_pct > 0:
        keep += round((length - keep) * keep_masked_pct)
    return int(keep)


__all__ = [
    "ARCHITECTURES",
    "PRETRAINING_FILE",
    "Data2Vec2PreTrainingOutput",
    "Data2Vec2PretrainingConfig",
    "STUDENT_PREFIX",
    "FairseqPretraining",
    "LoadedPretraining",
    "CONFIG_FILE",
    "FAIRSEQ_MODALITY",
    "block_mask_2d",
    "check_decoder_shape",
    "check_pretraining_array_names",
    "resolve_pretraining_config",
    "save_fairseq_pretraining",
    "save_pretraining_folder",
    "check_mask_counts",
    "check_precomputed_mask",
    "decoder_fairseq_name",
    "decoder_shapes",
    "encoder_fairseq_key",
    "fairseq_keys",
    "fairseq_pretraining_from",
    "is_local_name",
    "keep_count",
    "upstream_mask_order",
    "load_pretraining_for",
    "kept_positions",
    "load_pretraining",
    "pretraining_json",
    "pretraining_spec",
    "random_mask",
    "sample_mask",
    "span_mask",
    "read_fairseq_pretraining",
    "read_pretraining_json",
    "teacher_names",
    "write_fairseq_pretraining",
]
