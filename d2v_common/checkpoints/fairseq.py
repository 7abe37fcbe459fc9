"""Read original fairseq data2vec 2.0 checkpoints safely and turn them into d2v checkpoints.

``read_fairseq_checkpoint`` unpickles with ``torch.load(weights_only=True)`` and an explicit
allow-list (``FAIRSEQ_SAFE_GLOBALS``: what fairseq trainer checkpoints pickle besides tensors
and plain containers); any other class is refused with its name. ``convert_fairseq`` then

1. recognises the checkpoint kind from ``cfg.model._name`` (``KINDS``): pretraining
   (``data2vec_multi``), image classification, CTC fine-tuning, text classification;
2. builds the d2v config from the pretraining config (keys the public fairseq code does not
   define are ignored and listed in ``ConversionReport.notes``);
3. renames every tensor through ``_RENAMES`` (fairseq regex -> canonical name) and drops the
   pretraining-only parts (EMA teacher, decoders, reconstruction heads), listed in
   ``ConversionReport.dropped``; an unknown tensor is an error, never silently lost.

Only torch is needed (imported lazily): d2v_common itself stays framework-free.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig

FAIRSEQ_FORMAT = "fairseq"


class FairseqCheckpointError(ValueError):
    """A fairseq checkpoint that d2v cannot (or will not) read as data2vec 2.0."""


# ------------------------------------------------------------------------------- reading


def _enum_stand_in(name: str, members: dict[int, str]):
    """Unpickles a fairseq enum member (pickled as ``Enum(value)``) as its name, without
    importing fairseq."""

    def make(value):
        if value not in members:
            raise FairseqCheckpointError(f"unknown {name} value {value!r} in the checkpoint")
        return members[value]

    make.__name__ = name
    return make


_MODALITY_ENUM = _enum_stand_in("Modality", {1: "AUDIO", 2: "IMAGE", 3: "TEXT"})
_PREDICTION_ENUM = _enum_stand_in("PredictionMode", {1: "MEAN_POOLING", 2: "CLS_TOKEN", 3: "LIN_SOFTMAX"})
# Enums released checkpoints may pickle inside their config (OmegaConf keeps Enum members).
FAIRSEQ_ENUMS = [
    (_MODALITY_ENUM, f"{root}data2vec.data.modality.Modality") for root in ("examples.", "fairseq.examples.")
] + [
    (_PREDICTION_ENUM, f"{root}data2vec.models.mae_image_classification.PredictionMode")
    for root in ("examples.", "fairseq.examples.")
]


def _safe_globals() -> list:
    """Classes fairseq checkpoints pickle besides tensors and containers: the old-style
    ``args`` namespace, numpy scalars / dtypes (metrics, RNG states in extra_state) and the
    data2vec enums (``FAIRSEQ_ENUMS``, read as their member names)."""
    out: list = [argparse.Namespace, np.dtype, np.ndarray, *FAIRSEQ_ENUMS]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out += [scalar, _reconstruct]
    out += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    return out


def read_fairseq_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict of a fairseq ``checkpoint.pt``, unpickled with weights_only=True.

    Raises ``FileNotFoundError`` for a missing file and ``FairseqCheckpointError`` (a
    ``ValueError``) for a truncated / corrupt file or a pickled class outside the allow-list.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no fairseq checkpoint file at {path!r}")
    from d2v_common.checkpoints.formats import import_torch

    torch = import_torch()
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every torch.load failure becomes one clear error
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: ([\w.]+)", text)
        if found:
            raise FairseqCheckpointError(
                f"{path}: the checkpoint pickles {found.group(1)!r}, which is not on d2v's allow-list for "
                "fairseq checkpoints (argparse.Namespace, numpy scalars/dtypes, data2vec enums, tensors, plain "
                "containers); "
                "refusing to unpickle it. Re-save the checkpoint with plain dicts (OmegaConf.to_container)."
            ) from None
        raise FairseqCheckpointError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt file?): {type(e).__name__}: "
            f"{text.splitlines()[0] if text else ''}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise FairseqCheckpointError(f"{path}: not a fairseq trainer checkpoint (no 'model' state dict)")
    return ckpt


def is_fairseq_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a fairseq checkpoint (a ``.pt`` file, or a folder holding
    one ``checkpoint*.pt`` and no ``config.json``)."""
    return fairseq_checkpoint_file(path) is not None


def fairseq_checkpoint_file(path: str | os.PathLike) -> str | None:
    path = os.fspath(path)
    if os.path.isfile(path):
        return path if path.endswith(".pt") else None
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        found = sorted(n for n in os.listdir(path) if n.startswith("checkpoint") and n.endswith(".pt"))
        if len(found) == 1:
            return os.path.join(path, found[0])
    return None


# Keys only a fairseq trainer checkpoint has beside "model" (checkpoint_utils.save_state).
_TRAINER_KEYS = (b"optimizer_history", b"task_state", b"extra_state")
# How much of the pickled structure to scan: the keys come first, tensors live elsewhere.
_PEEK_BYTES = 1 << 20


def looks_like_fairseq_checkpoint(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` is a fairseq trainer checkpoint, recognised from its pickled
    keys without unpickling anything (cheap, and safe on any file)."""
    import zipfile

    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    try:
        if zipfile.is_zipfile(path):  # torch.save's zip layout: the structure is <name>/data.pkl
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not pickles:
                    return False
                with archive.open(pickles[0]) as f:
                    head = f.read(_PEEK_BYTES)
        else:  # torch's legacy layout starts with the pickled structure
            with open(path, "rb") as f:
                head = f.read(_PEEK_BYTES)
    except (OSError, zipfile.BadZipFile):
        return False
    return b"model" in head and any(key in head for key in _TRAINER_KEYS)


def missing_from_fairseq_hint(src: str | os.PathLike) -> str | None:
    """The error for a fairseq checkpoint given to ``d2v-convert`` without ``--from fairseq``
    (None when ``src`` is not one)."""
    file = fairseq_checkpoint_file(src)
    if file is None or not looks_like_fairseq_checkpoint(file):
        return None
    return (
        f"{os.fspath(src)} is an original fairseq checkpoint, not a d2v/HF checkpoint folder: add --from fairseq "
        f"(d2v-convert {os.fspath(src)} DST --from fairseq [--dict DICT] [--to FMT]; from Python: "
        "d2v_common.checkpoints.fairseq.convert_fairseq_to_folder)"
    )


# ------------------------------------------------------------------------ config mapping

# Keys the public fairseq code defines (Data2VecMultiConfig, D2vModalityConfig and its
# per-modality subclasses, D2vDecoderConfig). Anything else is ignored with a note.
_MODEL_KEYS = set(
    "_name loss_beta loss_scale depth start_drop_path_rate end_drop_path_rate num_heads norm_eps norm_affine "
    "encoder_dropout post_mlp_drop attention_dropout activation_dropout dropout_input layerdrop embed_dim "
    "mlp_ratio layer_norm_first average_top_k_layers end_of_block_targets clone_batch layer_norm_target_layer "
    "batch_norm_target_layer instance_norm_target_layer instance_norm_targets layer_norm_targets ema_decay "
    "ema_same_dtype log_norms ema_end_decay ema_anneal_end_step ema_encoder_only max_update modalities "
    "shared_decoder min_target_var min_pred_var supported_modality mae_init seed skip_ema cls_loss recon_loss "
    "d2v_loss decoder_group".split()
)
_MODALITY_KEYS = set(
    "_name type prenet_depth prenet_layerdrop prenet_dropout start_drop_path_rate end_drop_path_rate "
    "num_extra_tokens init_extra_token_zero mask_noise_std mask_prob_min mask_prob inverse_mask mask_prob_adjust "
    "keep_masked_pct mask_length add_masks remove_masks mask_dropout encoder_zero_mask mask_channel_prob "
    "mask_channel_length ema_local_encoder local_grad_mult use_alibi_encoder alibi_scale learned_alibi "
    "alibi_max_pos learned_alibi_scale learned_alibi_scale_per_head learned_alibi_scale_per_layer "
    "num_alibi_heads model_depth decoder "
    # audio
    "extractor_mode feature_encoder_spec conv_pos_width conv_pos_groups conv_pos_depth conv_pos_pre_ln "
    # image
    "input_size in_chans patch_size embed_dim alibi_dims alibi_distance fixed_positions transformer_decoder "
    "enc_dec_transformer "
    # text
    "max_source_positions learned_pos dropout no_scale_embedding layernorm_embedding "
    "no_token_positional_embeddings".split()
)
_DECODER_KEYS = set(
    "_name decoder_dim decoder_groups decoder_kernel decoder_layers input_dropout add_positions_masked "
    "add_positions_all decoder_residual projection_layers projection_ratio".split()
)


def _spec_list(spec: str) -> list[tuple[int, int, int]]:
    """Evaluate fairseq's ``feature_encoder_spec`` ("[(512, 10, 5)] + [(512, 3, 2)] * 4") safely:
    only int tuples, lists, ``+`` and ``*`` are allowed."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))

    try:
        layers = ev(ast.parse(spec, mode="eval"))
        layers = [tuple(int(v) for v in layer) for layer in layers]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError("need (dim, kernel, stride) triples")
    except (SyntaxError, ValueError, TypeError) as e:
        raise FairseqCheckpointError(f"cannot read feature_encoder_spec {spec!r}: {e}") from None
    return layers


def _get(d: dict, key: str, default: Any) -> Any:
    value = d.get(key, default)
    return default if value is None else value


def _common_fields(model: dict, mod: dict) -> dict:
    heads = int(model["num_heads"])
    use_alibi = bool(_get(mod, "use_alibi_encoder", False))
    if use_alibi and mod.get("learned_alibi"):
        raise FairseqCheckpointError(
            "learned_alibi=True checkpoints are not supported: upstream's forward pass cannot run them either "
            "(_learned_alibi_bias is called without its scale argument)"
        )
    alibi_heads = int(_get(mod, "num_alibi_heads", heads))
    return dict(
        hidden_size=int(model["embed_dim"]),
        num_hidden_layers=int(model["depth"]),
        num_attention_heads=heads,
        intermediate_size=int(int(model["embed_dim"]) * float(_get(model, "mlp_ratio", 4.0))),
        hidden_act="gelu",
        layer_norm_eps=float(_get(model, "norm_eps", 1e-6)),
        layer_norm_affine=bool(_get(model, "norm_affine", True)),
        layer_norm_first=bool(_get(model, "layer_norm_first", False)),
        num_prenet_layers=int(_get(mod, "prenet_depth", 4)),
        num_extra_tokens=int(_get(mod, "num_extra_tokens", 0)),
        hidden_dropout=float(_get(model, "encoder_dropout", 0.0)),
        attention_dropout=float(_get(model, "attention_dropout", 0.0)),
        activation_dropout=float(_get(model, "activation_dropout", 0.0)),
        post_mlp_dropout=float(_get(model, "post_mlp_drop", 0.0)),
        use_alibi=use_alibi,
        alibi_scale=float(_get(mod, "alibi_scale", 1.0)),
        alibi_scale_per_head=bool(_get(mod, "learned_alibi_scale_per_head", False)),
        alibi_scale_per_layer=bool(_get(mod, "learned_alibi_scale_per_layer", False)),
        learned_alibi_scale=bool(_get(mod, "learned_alibi_scale", False)),
        num_alibi_heads=None if alibi_heads == heads else alibi_heads,
    )


def _vision_fields(mod: dict) -> dict:
    dims = int(_get(mod, "alibi_dims", 2))
    return dict(
        image_size=int(_get(mod, "input_size", 224)),
        patch_size=int(_get(mod, "patch_size", 16)),
        num_channels=int(_get(mod, "in_chans", 3)),
        patch_embed_dim=int(_get(mod, "embed_dim", 768)),
        use_fixed_positions=bool(_get(mod, "fixed_positions", True)),
        alibi_dims=dims,
        alibi_distance=str(_get(mod, "alibi_distance", "manhattan")),
    )


def _audio_fields(mod: dict) -> dict:
    layers = _spec_list(str(_get(mod, "feature_encoder_spec", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")))
    mode = str(_get(mod, "extractor_mode", "layer_norm"))
    if mode not in ("layer_norm", "default"):
        raise FairseqCheckpointError(f"unknown audio extractor_mode {mode!r} (expected 'layer_norm' or 'default')")
    depth = int(_get(mod, "conv_pos_depth", 5))
    return dict(
        conv_dim=[layer[0] for layer in layers],
        conv_kernel=[layer[1] for layer in layers],
        conv_stride=[layer[2] for layer in layers],
        feat_extract_norm="layer" if mode == "layer_norm" else "group",
        num_conv_pos_embeddings=depth,
        conv_pos_kernel_size=max(3, int(_get(mod, "conv_pos_width", 95)) // max(depth, 1)),
        num_conv_pos_embedding_groups=int(_get(mod, "conv_pos_groups", 16)),
        conv_pos_pre_layer_norm=bool(_get(mod, "conv_pos_pre_ln", False)),
    )


def _text_fields(mod: dict) -> dict:
    return dict(
        max_position_embeddings=int(_get(mod, "max_source_positions", 512)),
        use_learned_position_embeddings=bool(_get(mod, "learned_pos", True)),
        scale_embedding=not bool(_get(mod, "no_scale_embedding", True)),
        use_embedding_layer_norm=bool(_get(mod, "layernorm_embedding", True)),
        use_position_embeddings=not bool(_get(mod, "no_token_positional_embeddings", False)),
    )


def config_from_model_cfg(model_cfg: dict, modality: str, **fields):
    """The ``Data2Vec2*Config`` a fairseq ``data2vec_multi`` model config (``cfg['model']``)
    describes for ``modality`` (``image``, ``audio``; ``text`` needs ``vocab_size`` among
    ``fields``, which override what the config gives), with no checkpoint: e.g. to build a model
    of a released recipe from scratch."""
    sub = modality.lower()
    config_cls = {"image": Data2Vec2VisionConfig, "audio": Data2Vec2AudioConfig, "text": Data2Vec2TextConfig}[sub]
    mod = (model_cfg.get("modalities") or {}).get(sub) or {}
    values = _common_fields(model_cfg, mod)
    values.update({"image": _vision_fields, "audio": _audio_fields, "text": _text_fields}[sub](mod))
    if sub == "image" and values["patch_embed_dim"] == values["hidden_size"]:
        values["patch_embed_dim"] = None
    values.update(fields)
    return config_cls(**values)


# ---------------------------------------------------------------------------- state dict

# fairseq name (inside Data2VecMultiModel, modality prefix "M." stripped) -> canonical suffix.
_BLOCK = [
    (r"attn\.qkv\.", "attention.qkv_proj."),
    (r"attn\.proj\.", "attention.out_proj."),
    (r"norm1\.", "layer_norm."),
    (r"norm2\.", "final_layer_norm."),
    (r"mlp\.fc1\.", "feed_forward.intermediate_dense."),
    (r"mlp\.fc2\.", "feed_forward.output_dense."),
]
_RENAMES = [
    (r"^blocks\.(\d+)\.(.*)$", r"encoder.layers.\1.\2", True),
    (r"^norm\.(weight|bias)$", r"encoder.final_layer_norm.\1", False),
    (r"^M\.context_encoder\.blocks\.(\d+)\.(.*)$", r"encoder.prenet_layers.\1.\2", True),
    (r"^M\.context_encoder\.norm\.(weight|bias)$", r"encoder.layer_norm.\1", False),
    (r"^M\.extra_tokens$", "encoder.extra_tokens", False),
    (r"^M\.alibi_scale$", "encoder.alibi_scale", False),
    # image
    (r"^M\.local_encoder\.(?:0\.)?proj\.(weight|bias)$", r"embeddings.patch_embeddings.projection.\1", False),
    (r"^M\.local_encoder\.1\.(weight|bias)$", r"embeddings.patch_embeddings.dense.\1", False),
    (r"^M\.fixed_positional_encoder\.positions$", "embeddings.position_embeddings", False),
    # audio
    (r"^M\.local_encoder\.conv_layers\.(\d+)\.0\.weight$", r"feature_extractor.conv_layers.\1.conv.weight", False),
    # LayerNorm after every conv ("layer_norm" mode), GroupNorm after the first ("default")
    (r"^M\.local_encoder\.conv_layers\.(\d+)\.2\.(?:1\.)?(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2",
     False),
    (r"^M\.project_features\.1\.(weight|bias)$", r"feature_projection.layer_norm.\1", False),
    (r"^M\.project_features\.2\.(weight|bias)$", r"feature_projection.projection.\1", False),
    # (relative_positional_encoder: see _rename_pos_conv)
    # text
    (r"^M\.local_encoder\.embed_tokens\.weight$", "embeddings.word_embeddings.weight", False),
    (r"^M\.local_encoder\.embed_positions\.weight$", "embeddings.position_embeddings.weight", False),
    (r"^M\.local_encoder\.layernorm_embedding\.(weight|bias)$", r"embeddings.layer_norm.\1", False),
]
# Pretraining-only parts: dropped and listed.
_DROPPED = [
    r"^_ema(\.|$)",
    r"^M\.decoder\.",
    r"^shared_decoder\.",
    r"^recon_proj\.",
    r"^ema\.",
    r"^M\.encoder_mask$",
    r"^M\.local_encoder\.embed_positions\._float_tensor$",
]


def _rename_pos_conv(name: str, pos_conv_pre_ln: bool) -> str | None:
    """Upstream's positional convs: Sequential(TransposeLast, block 1 .. block N, TransposeLast)
    with each block's conv at index 0; ``conv_pos_pre_ln`` wraps that as Sequential(LayerNorm, ...)."""
    local = name[len("M.relative_positional_encoder.") :]
    if pos_conv_pre_ln:
        m = re.match(r"^0\.(weight|bias)$", local)
        if m:
            return f"encoder.pos_conv_layer_norm.{m.group(1)}"
        if not local.startswith("1."):
            return None
        local = local[2:]
    m = re.match(r"^(\d+)\.0\.(weight|bias)$", local)
    if not m or int(m.group(1)) == 0:
        return None
    return f"encoder.pos_conv_embed.layers.{int(m.group(1)) - 1}.conv.{m.group(2)}"


def _rename(name: str, pos_conv_pre_ln: bool) -> str | None:
    """Canonical name of a fairseq tensor (modality prefix shortened to ``M.``), or None."""
    if name.startswith("M.relative_positional_encoder."):
        return _rename_pos_conv(name, pos_conv_pre_ln)
    for pattern, repl, is_block in _RENAMES:
        m = re.match(pattern, name)
        if not m:
            continue
        out = m.expand(repl)
        if is_block:
            rest = m.group(2)
            prefix = out[: len(out) - len(rest)]
            for bp, brepl in _BLOCK:
                if re.match(bp, rest):
                    return prefix + re.sub("^" + bp, brepl, rest)
            return None
        return out
    return None


def canonical_name(key: str, modality: str, pos_conv_pre_ln: bool = False) -> str | None:
    """Canonical encoder name of a ``Data2VecMultiModel`` state key (``blocks.0.attn.qkv.weight``,
    ``modality_encoders.IMAGE.extra_tokens`` ...), or None for a tensor outside the encoder."""
    prefix = f"modality_encoders.{modality}."
    if key.startswith(prefix):
        key = "M." + key[len(prefix):]
    elif key.startswith("modality_encoders."):
        return None
    return _rename(key, pos_conv_pre_ln)


def tensor_to_numpy(value) -> np.ndarray:
    """A checkpoint tensor as a float32 (floating) numpy array."""
    return _to_numpy(value)


@dataclass
class ConversionReport:
    """What a conversion did: the checkpoint kind, tensors dropped, notes on ignored config keys."""

    kind: str = ""
    architecture: str = ""
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fairseq {self.kind} checkpoint -> {self.architecture}"]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} pretraining-only tensors: {', '.join(self.dropped[:8])}"
                         + (" ..." if len(self.dropped) > 8 else ""))
        lines += self.notes
        return "\n".join(lines)


# ----------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class _Kind:
    """One fairseq model class: where its pretraining config and encoder weights live."""

    name: str
    encoder_prefix: str
    pretraining_cfg: tuple[str, ...]  # path of the data2vec_multi config inside cfg.model


KINDS = {
    "data2vec_multi": _Kind("pretraining", "", ()),
    "mae_image_classification": _Kind("image classification", "model.", ("pretrained_model_args", "model")),
    "wav2vec_ctc": _Kind("CTC fine-tuned", "w2v_encoder.w2v_model.", ("w2v_args", "model")),
    "data2vec_text_classification": _Kind("text classification", "model.", ("pretrained_model_args", "model")),
}
_MODALITY = {
    "IMAGE": ("image", Data2Vec2VisionConfig, "Data2Vec2VisionModel"),
    "AUDIO": ("audio", Data2Vec2AudioConfig, "Data2Vec2AudioModel"),
    "TEXT": ("text", Data2Vec2TextConfig, "Data2Vec2TextModel"),
}
_V1_NAMES = ("data2vec_audio", "data2vec_text", "data2vec_vision", "data2vec_image", "data2vec_text_classification_v1")


def _model_cfg(ckpt: dict, path: str) -> dict:
    cfg = ckpt.get("cfg")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):  # pre-hydra fairseq: only 1.0-era models
        arch = getattr(args, "arch", None) or getattr(args, "_name", None)
        raise FairseqCheckpointError(
            f"{path}: an old-style (argparse) fairseq checkpoint of {arch!r}; data2vec 2.0 checkpoints carry a "
            "'cfg' dict with model._name 'data2vec_multi' (or a fine-tuning wrapper around it)"
        )
    raise FairseqCheckpointError(f"{path}: no model config (cfg.model) in the checkpoint")


def _not_d2v2(path: str, name: str) -> FairseqCheckpointError:
    if name in _V1_NAMES:
        return FairseqCheckpointError(
            f"{path}: a data2vec 1.0 checkpoint (model {name!r}), not data2vec 2.0; convert it to the HF format "
            "and load it with the Data2Vec* (1.0) classes"
        )
    return FairseqCheckpointError(
        f"{path}: model {name!r} is not a data2vec 2.0 model; d2v reads {', '.join(sorted(KINDS))} checkpoints"
    )


def _notes_for(cfg: dict, known: set, where: str, notes: list[str]) -> None:
    for key in sorted(set(cfg) - known):
        notes.append(f"note: ignored config key {where}.{key} (not defined by the public fairseq code)")


def convert_fairseq(
    path: str | os.PathLike,
    *,
    head: str | None = None,
    dictionary: str | os.PathLike | None = None,
    checkpoint: dict | None = None,
) -> tuple[Any, str, dict[str, np.ndarray], ConversionReport]:
    """``(config, architecture, canonical arrays, report)`` for a fairseq data2vec 2.0 checkpoint.

    Args:
        path: the fairseq ``checkpoint.pt`` (or a folder holding exactly one).
        head: which ``classification_heads`` entry of a text classifier to keep (needed only
            when it has several).
        dictionary: the model's fairseq dictionary, checked against its vocabulary: a text
            model's ``dict.txt`` (``4 + lines + 1`` with ``<mask>`` = embedding rows) or a CTC
            model's letter dictionary ``dict.ltr.txt`` (``4 + lines`` = output rows; a
            ``<ctc_blank>`` symbol becomes the blank). Other models have no vocabulary: an error.
        checkpoint: the checkpoint dict ``read_fairseq_checkpoint(path)`` returned already (a
            caller that reads more of it, as the pretraining classes do, unpickles it once).

    Returns:
        The config, HF-style architecture name, ``{canonical name: float32 array}`` and a
        ``ConversionReport`` (dropped tensors, ignored keys).

    Examples:
        >>> config, arch, arrays, report = convert_fairseq("checkpoint.pt")  # doctest: +SKIP
    """
    file = fairseq_checkpoint_file(path) or os.fspath(path)
    ckpt = read_fairseq_checkpoint(file) if checkpoint is None else checkpoint
    model_cfg = _model_cfg(ckpt, file)
    name = str(model_cfg.get("_name"))
    if name not in KINDS:
        raise _not_d2v2(file, name)
    kind = KINDS[name]
    report = ConversionReport(kind=kind.name)
    pre = model_cfg
    for key in kind.pretraining_cfg:
        pre = pre.get(key) if isinstance(pre, dict) else None
    if not isinstance(pre, dict):
        raise FairseqCheckpointError(
            f"{file}: {name} checkpoint without its pretraining config at cfg.model.{'.'.join(kind.pretraining_cfg)}"
        )
    if str(pre.get("_name")) != "data2vec_multi":
        raise _not_d2v2(file, str(pre.get("_name")))

    state = {k: v for k, v in ckpt["model"].items()}
    prefix = kind.encoder_prefix
    modality = pre.get("supported_modality")
    present = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(prefix + "modality_encoders.")}
    if modality is None:
        if len(present) != 1:
            raise FairseqCheckpointError(f"{file}: expected one modality encoder, found {sorted(present) or 'none'}")
        modality = present.pop()
    modality = str(modality).upper().replace("MODALITY.", "")
    if modality not in _MODALITY:
        raise FairseqCheckpointError(f"{file}: unknown modality {modality!r}")
    sub, config_cls, base_arch = _MODALITY[modality]
    mods = pre.get("modalities") or {}
    mod = mods.get(sub) or {}

    _notes_for(pre, _MODEL_KEYS, "model", report.notes)
    _notes_for(mod, _MODALITY_KEYS, f"model.modalities.{sub}", report.notes)
    if isinstance(mod.get("decoder"), dict):
        _notes_for(mod["decoder"], _DECODER_KEYS, f"model.modalities.{sub}.decoder", report.notes)

    fields = _common_fields(pre, mod)
    fields.update({"image": _vision_fields, "audio": _audio_fields, "text": _text_fields}[sub](mod))
    if sub == "image":
        if fields["patch_embed_dim"] == fields["hidden_size"]:
            fields["patch_embed_dim"] = None

    # ---- encoder tensors
    arrays: dict[str, np.ndarray] = {}
    head_state: dict[str, Any] = {}
    mod_prefix = f"modality_encoders.{modality}."
    unknown = []
    for key, value in state.items():
        if not key.startswith(prefix) or (prefix and key == "_ema"):
            head_state[key] = value
            continue
        local = key[len(prefix) :]
        if local.startswith("modality_encoders."):
            if not local.startswith(mod_prefix):
                report.dropped.append(key)  # other modalities' encoders (unused)
                continue
            local = "M." + local[len(mod_prefix) :]
        if any(re.match(p, local) for p in _DROPPED):
            report.dropped.append(key)
            continue
        new = _rename(local, fields.get("conv_pos_pre_layer_norm", False))
        if new is None:
            unknown.append(key)
            continue
        arrays[new] = _to_numpy(value)

    # ---- heads
    architecture = base_arch
    head_prefix = {"image": "data2vec2_vision.", "audio": "data2vec2_audio.", "text": "data2vec2_text."}[sub]
    heads: dict[str, np.ndarray] = {}
    if name == "mae_image_classification":
        architecture = "Data2Vec2VisionForImageClassification"
        fields["pooling_mode"] = {"MEAN_POOLING": "mean", "CLS_TOKEN": "cls", "LIN_SOFTMAX": "lin_softmax"}.get(
            str(model_cfg.get("prediction_mode", "MEAN_POOLING")).replace("PredictionMode.", ""), None
        )
        if fields["pooling_mode"] is None:
            raise FairseqCheckpointError(f"{file}: unknown prediction_mode {model_cfg.get('prediction_mode')!r}")
        fields["use_fc_norm"] = bool(_get(model_cfg, "use_fc_norm", True))
        for old, new in (("fc_norm.", "fc_norm."), ("head.", "classifier.")):
            for leaf in ("weight", "bias"):
                if old + leaf in head_state:
                    heads[new + leaf] = _to_numpy(head_state.pop(old + leaf))
        fields["num_labels"] = int(heads["classifier.weight"].shape[0])
    elif name == "wav2vec_ctc":
        architecture = "Data2Vec2AudioForCTC"
        for leaf in ("weight", "bias"):
            if f"w2v_encoder.proj.{leaf}" in head_state:
                heads[f"lm_head.{leaf}"] = _to_numpy(head_state.pop(f"w2v_encoder.proj.{leaf}"))
        if "lm_head.weight" not in heads:
            raise FairseqCheckpointError(f"{file}: CTC checkpoint without w2v_encoder.proj (no output layer)")
        fields["vocab_size"] = int(heads["lm_head.weight"].shape[0])
        fields["pad_token_id"] = 0  # fairseq's CTC blank is index 0
        fields["blank_weight"] = float(_get(model_cfg, "blank_weight", 0.0))
        fields["blank_mode"] = str(_get(model_cfg, "blank_mode", "add"))
        fields["final_dropout"] = float(_get(model_cfg, "final_dropout", 0.0))
    elif name == "data2vec_text_classification":
        architecture = "Data2Vec2TextForSequenceClassification"
        names = sorted({k.split(".")[1] for k in head_state if k.startswith("classification_heads.")})
        if head is None and len(names) != 1:
            raise FairseqCheckpointError(
                f"{file}: the checkpoint has classification heads {names}; pick one with head=<name>"
            )
        chosen = head or names[0]
        if chosen not in names:
            raise FairseqCheckpointError(f"{file}: no classification head {chosen!r}; it has {names}")
        for part in ("dense", "out_proj"):
            for leaf in ("weight", "bias"):
                heads[f"classifier.{part}.{leaf}"] = _to_numpy(
                    head_state.pop(f"classification_heads.{chosen}.{part}.{leaf}")
                )
        for other in [k for k in head_state if k.startswith("classification_heads.")]:
            head_state.pop(other)
            report.dropped.append(other)
        fields["num_labels"] = int(heads["classifier.out_proj.weight"].shape[0])
        fields["classifier_hidden_size"] = int(heads["classifier.dense.weight"].shape[0])
        act = str(_get(model_cfg, "pooler_activation_fn", "tanh"))
        fields["classifier_activation"] = act
    for key in list(head_state):
        if any(re.match(p, key) for p in _DROPPED):
            report.dropped.append(key)
            head_state.pop(key)
    unknown += sorted(head_state)
    if unknown:
        raise FairseqCheckpointError(f"{file}: tensors d2v does not know how to map: {unknown[:8]}")

    _sizes_from_weights(fields, arrays, report)
    if sub == "text":
        vocab = arrays["embeddings.word_embeddings.weight"].shape[0]
        fields["vocab_size"] = int(vocab)
        fields["pad_token_id"], fields["bos_token_id"], fields["eos_token_id"] = 1, 0, 2
    if dictionary is not None:
        _check_dictionary_fits(file, dictionary, architecture, fields)
    elif architecture == "Data2Vec2AudioForCTC":
        report.notes.append(
            "note: no letter dictionary given, so no tokenizer: pass the model's dict.ltr.txt (--dict) to turn its "
            "ids into text"
        )
    if "encoder.alibi_scale" in arrays and arrays["encoder.alibi_scale"].ndim == 4:
        arrays["encoder.alibi_scale"] = arrays["encoder.alibi_scale"][None]  # upstream's upgrade step
    try:
        config = config_cls(**fields)
    except (TypeError, ValueError) as e:
        raise FairseqCheckpointError(f"{file}: the checkpoint's config does not make a valid model: {e}") from None
    if architecture != base_arch:
        arrays = {head_prefix + k: v for k, v in arrays.items()}
    arrays.update(heads)
    _check_against_spec(file, config, architecture, arrays)
    report.architecture = architecture
    config.architectures = [architecture]
    return config, architecture, arrays, report


def _sizes_from_weights(fields: dict, arrays: dict[str, np.ndarray], report: ConversionReport) -> None:
    """Widths the weights fix (MLP and patch-embedding width): the tensors win over a config
    that disagrees (older configs may lack the key and fall back to upstream's default)."""
    checks = [("intermediate_size", "encoder.layers.0.feed_forward.intermediate_dense.weight")]
    if "patch_embed_dim" in fields:
        checks.append(("patch_embed_dim", "embeddings.patch_embeddings.projection.weight"))
    for key, name in checks:
        if name not in arrays:
            continue
        width = int(arrays[name].shape[0])
        configured = fields[key] if fields[key] is not None else fields["hidden_size"]
        if width != configured:
            report.notes.append(f"note: {key} taken from the weights ({width}), the config says {configured}")
        fields[key] = None if key == "patch_embed_dim" and width == fields["hidden_size"] else width


def _to_numpy(value) -> np.ndarray:
    if not hasattr(value, "detach"):
        raise FairseqCheckpointError(f"expected a tensor in the state dict, got {type(value).__name__}")
    t = value.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # bf16 / fp16 / fp64 checkpoints become float32
    return t.numpy().copy()


def _check_against_spec(file: str, config, architecture: str, arrays: dict[str, np.ndarray]) -> None:
    from d2v_common.spec import weight_spec

    spec = weight_spec(config, architecture)
    expected, got = set(spec.names()), set(arrays)
    if expected != got:
        raise FairseqCheckpointError(
            f"{file}: the tensors do not match the config's {architecture}: missing {sorted(expected - got)[:6]}, "
            f"unexpected {sorted(got - expected)[:6]}"
        )
    for p in spec:
        if tuple(arrays[p.name].shape) != p.shape:
            raise FairseqCheckpointError(
                f"{file}: {p.name} has shape {tuple(arrays[p.name].shape)}, the config implies {p.shape}"
            )


# ------------------------------------------------------------------------- dictionaries

# fairseq's Dictionary gives these ids 0..3, then the file's symbols follow in file order.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
# data2vec 2.0 text models append <mask> after the file's symbols (the masked-LM task adds it).
TEXT_MASK = "<mask>"
# A letter dictionary may name its own CTC blank; otherwise the blank is <s> (id 0).
CTC_BLANK = "<ctc_blank>"
# The file each dictionary kind is stored as in a converted folder (fairseq's own names).
TEXT_DICT_FILE = "dict.txt"
LETTER_DICT_FILE = "dict.ltr.txt"
_OVERWRITE_FLAG = "#fairseq:overwrite"


def read_fairseq_dictionary(path: str | os.PathLike) -> list[str]:
    """Symbols of a fairseq dictionary file in id order: the four specials
    (``FAIRSEQ_SPECIALS``), then one symbol per ``"symbol count [#fairseq:overwrite]"`` line.

    The rules are fairseq's: the symbol is everything before the last space, the count must
    be an integer, and a repeated symbol needs the overwrite flag (it then takes a new id).
    Raises ``ValueError`` naming the line otherwise.
    """
    path = os.fspath(path)
    symbols = list(FAIRSEQ_SPECIALS)
    seen = set(symbols)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip().rsplit(" ", 1)
            overwrite = len(fields) == 2 and fields[1] == _OVERWRITE_FLAG
            if overwrite:
                fields = fields[0].rsplit(" ", 1)
            if len(fields) != 2 or not fields[0] or not re.fullmatch(r"[+-]?\d+", fields[1]):
                raise FairseqCheckpointError(
                    f"{path}, line {number}: {line.rstrip()!r} is not a fairseq dictionary line; every line must be "
                    f"'<symbol> <count>' (optionally followed by {_OVERWRITE_FLAG})"
                )
            symbol = fields[0]
            if symbol in seen and not overwrite:
                raise FairseqCheckpointError(
                    f"{path}, line {number}: symbol {symbol!r} appears twice (fairseq refuses that too unless the line "
                    f"ends with {_OVERWRITE_FLAG})"
                )
            seen.add(symbol)
            symbols.append(symbol)
    return symbols


def _size_mismatch(path: str, what: str, symbols: int, rows: int, layer: str, fix: str) -> FairseqCheckpointError:
    return FairseqCheckpointError(
        f"{path} gives {symbols} symbols ({what}) but the checkpoint's {layer} has {rows} rows; {fix}"
    )


def check_dictionary(path: str | os.PathLike, vocab_size: int) -> list[str]:
    """Symbols of a text model's fairseq ``dict.txt`` in id order (<s>, <pad>, </s>, <unk>,
    entries, <mask>); raises ``ValueError`` when their count does not match the embedding rows."""
    path = os.fspath(path)
    symbols = read_fairseq_dictionary(path) + [TEXT_MASK]
    if len(symbols) != vocab_size:
        raise _size_mismatch(
            path, f"4 specials + {len(symbols) - 5} entries + {TEXT_MASK}", len(symbols), vocab_size,
            "word embedding", "pass the dict.txt this model was trained with (fairseq keeps it beside the "
            f"checkpoint or in the task's data folder): it needs {vocab_size - 5} entries",
        )
    return symbols


def check_letter_dictionary(path: str | os.PathLike, vocab_size: int) -> list[str]:
    """Symbols of a CTC model's fairseq letter dictionary (``dict.ltr.txt``) in id order
    (<s>, <pad>, </s>, <unk>, entries); raises ``ValueError`` when their count does not match
    the output layer's rows, or when a symbol repeats (a vocabulary maps each token once)."""
    path = os.fspath(path)
    symbols = read_fairseq_dictionary(path)
    if len(symbols) != vocab_size:
        raise _size_mismatch(
            path, f"4 specials + {len(symbols) - 4} entries", len(symbols), vocab_size, "output layer (lm_head)",
            "pass the letter dictionary this model was fine-tuned with (fairseq's dict.ltr.txt from the "
            f"fine-tuning data folder): it needs {vocab_size - 4} entries",
        )
    repeated = sorted({s for s in symbols if symbols.count(s) > 1})
    if repeated:
        raise FairseqCheckpointError(f"{path}: symbols {repeated} appear twice; a CTC vocabulary needs each once")
    return symbols


def ctc_blank_id(symbols: list[str]) -> int:
    """fairseq's CTC blank: the ``<ctc_blank>`` symbol when the dictionary has one, else <s> (id 0)."""
    return symbols.index(CTC_BLANK) if CTC_BLANK in symbols else 0


def letter_tokenizer(symbols: list[str]):
    """A ``CTCTokenizer`` that decodes a fairseq CTC model's ids as fairseq's letter decoding
    does: runs merged, the blank dropped, ``|`` (the word boundary) turned into a space.

    The vocabulary keeps fairseq's ids. The blank becomes the pad token: with no
    ``<ctc_blank>`` symbol, ids 0 and 1 are named ``<pad>`` and ``<s>`` (the layout of HF's
    converted wav2vec 2.0 tokenizers), since fairseq's blank is its <s> (id 0).
    """
    from d2v_common.processing.ctc import CTCTokenizer

    names = list(symbols)
    if CTC_BLANK in names:
        pad = CTC_BLANK
    else:
        names[0], names[1] = names[1], names[0]
        pad = names[0]
    return CTCTokenizer(
        {name: i for i, name in enumerate(names)},
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=pad,
        word_delimiter_token="|",
        replace_word_delimiter_char=" ",
        do_lower_case=False,
        clean_up_tokenization_spaces=False,
    )


def _check_dictionary_fits(file: str, dictionary, architecture: str, fields: dict) -> None:
    """Check ``dictionary`` against the model's vocabulary (every modality) and take the CTC
    blank from a letter dictionary."""
    if architecture.startswith("Data2Vec2Text"):
        check_dictionary(dictionary, fields["vocab_size"])
    elif architecture == "Data2Vec2AudioForCTC":
        fields["pad_token_id"] = ctc_blank_id(check_letter_dictionary(dictionary, fields["vocab_size"]))
    else:
        raise FairseqCheckpointError(
            f"{file}: a dictionary (--dict) applies to text models (their dict.txt) and CTC speech models (their "
            f"letter dictionary dict.ltr.txt); this {architecture} checkpoint has no vocabulary: leave --dict out"
        )


def write_dictionary_files(folder: str | os.PathLike, dictionary: str | os.PathLike, architecture: str) -> list[str]:
    """Put a checked fairseq dictionary into a converted ``folder``: a text model's as
    ``dict.txt``; a CTC model's letter dictionary as ``dict.ltr.txt`` plus the tokenizer
    files (``vocab.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) that
    ``CTCTokenizer`` and HF's ``Wav2Vec2CTCTokenizer`` read."""
    import shutil

    folder = os.fspath(folder)
    if architecture == "Data2Vec2AudioForCTC":
        written = letter_tokenizer(read_fairseq_dictionary(dictionary)).save_pretrained(folder)
        name = LETTER_DICT_FILE
    else:
        written, name = [], TEXT_DICT_FILE
    shutil.copyfile(dictionary, os.path.join(folder, name))
    return [*written, os.path.join(folder, name)]


def convert_fairseq_to_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    head: str | None = None,
    dictionary: str | os.PathLike | None = None,
    formats: tuple[str, ...] = ("safetensors",),
    overwrite: bool = False,
) -> ConversionReport:
    """Write a d2v checkpoint folder (``config.json`` with ``architectures`` + weights) for a
    fairseq data2vec 2.0 checkpoint. A ``dictionary`` is checked and copied along; a CTC
    model's letter dictionary also becomes its tokenizer (``write_dictionary_files``).

    Everything is written into a temporary sibling folder that is renamed into place, so a
    failed conversion leaves nothing at ``dst``.

    Examples:
        >>> print(convert_fairseq_to_folder("checkpoint.pt", "out"))  # doctest: +SKIP
    """
    import shutil

    from d2v_common.io_utils import fresh_sibling, install
    from d2v_common.checkpoints.formats import write_pretrained
    from d2v_common.spec import weight_spec

    dst = os.path.abspath(os.fspath(dst))
    if os.path.lexists(dst) and not overwrite:
        raise FileExistsError(f"destination {dst} already exists; pass overwrite=True (--overwrite) to replace it")
    config, architecture, arrays, report = convert_fairseq(src, head=head, dictionary=dictionary)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = fresh_sibling(dst, "tmp")
    try:
        write_pretrained(tmp, arrays, weight_spec(config, architecture), config, list(formats))
        if dictionary is not None:
            write_dictionary_files(tmp, dictionary, architecture)
        install(tmp, dst, overwrite)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return report
