"""Weight specs of the three data2vec 2.0 families.

Canonical names (what ``model.safetensors`` holds; Keras variable paths and tf_model.h5 names
follow from them by ``d2v_common.spec.layouts``), with the fairseq module each one comes from:

===========================================  ===============================================
``encoder.extra_tokens``                     ``modality_encoders.X.extra_tokens`` (CLS ...)
``encoder.alibi_scale``                      ``modality_encoders.X.alibi_scale``
``encoder.layer_norm``                       ``modality_encoders.X.context_encoder.norm``
``encoder.prenet_layers.{i}.*``              ``modality_encoders.X.context_encoder.blocks.{i}``
``encoder.layers.{i}.*``                     ``blocks.{i}``
``encoder.final_layer_norm``                 ``norm`` (``layer_norm_first`` only)
block ``attention.qkv_proj`` / ``out_proj``  ``attn.qkv`` / ``attn.proj``
block ``layer_norm`` / ``final_layer_norm``  ``norm1`` / ``norm2``
block ``feed_forward.intermediate_dense``    ``mlp.fc1`` (``output_dense``: ``mlp.fc2``)
===========================================  ===============================================

Modality front ends: vision ``embeddings.patch_embeddings.projection`` (+ ``.dense``) and
``embeddings.position_embeddings``; audio ``feature_extractor`` / ``feature_projection`` /
``encoder.pos_conv_embed`` with 1.0's names; text ``embeddings.word_embeddings``,
``embeddings.position_embeddings``, ``embeddings.layer_norm``. The fairseq -> canonical table
itself is in ``d2v_common.checkpoints.fairseq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from d2v_common.data2vec2 import (
    Data2Vec2AudioConfig,
    Data2Vec2ConfigBase,
    Data2Vec2TextConfig,
    Data2Vec2VisionConfig,
    sincos_2d_positions,
)
from d2v_common.spec.core import Init, ParamSpec, SpecBuilder, WeightSpec, fill, normal


@dataclass(frozen=True)
class SincosInit(Init):
    """A fresh image model's fixed positions: the 2-D sin-cos table (not random)."""

    def sample(self, shape, rng, dtype):
        _, patches, dim = shape
        return sincos_2d_positions(dim, int(round(patches**0.5)))[None].astype(dtype)


def _frozen(b: SpecBuilder, name: str, shape, init: Init, trainable: bool) -> None:
    b.out.append(ParamSpec(b._join(name), tuple(int(s) for s in shape), "param", name, init, trainable=trainable))


def _norm(b: SpecBuilder, name: str, dim: int, affine: bool) -> None:
    if affine:
        b.layer_norm(name, dim)


def _block(b: SpecBuilder, config: Data2Vec2ConfigBase) -> None:
    d, affine = config.hidden_size, config.layer_norm_affine
    attn = b.scope("attention")
    attn.linear("qkv_proj", d, 3 * d)
    attn.linear("out_proj", d, d)
    _norm(b, "layer_norm", d, affine)
    ff = b.scope("feed_forward")
    ff.linear("intermediate_dense", d, config.intermediate_size)
    ff.linear("output_dense", config.intermediate_size, d)
    _norm(b, "final_layer_norm", d, affine)


def has_context_norm(config: Data2Vec2ConfigBase) -> bool:
    """Whether the context encoder starts with a LayerNorm (text: only with prenet layers)."""
    if config.layer_norm_first:
        return False
    return config.num_prenet_layers > 0 or not isinstance(config, Data2Vec2TextConfig)


def _encoder(b: SpecBuilder, config: Data2Vec2ConfigBase) -> None:
    d = config.hidden_size
    enc = b.scope("encoder")
    if config.num_extra_tokens:
        enc.param("extra_tokens", (1, config.num_extra_tokens, d), normal(config.initializer_range))
    if config.use_alibi:
        _frozen(enc, "alibi_scale", config.alibi_scale_shape, fill(config.alibi_scale), config.learned_alibi_scale)
    if has_context_norm(config):
        _norm(enc, "layer_norm", d, config.layer_norm_affine)
    for i in range(config.num_prenet_layers):
        _block(enc.scope(f"prenet_layers.{i}"), config)
    for i in range(config.num_hidden_layers):
        _block(enc.scope(f"layers.{i}"), config)
    if config.layer_norm_first:
        _norm(enc, "final_layer_norm", d, config.layer_norm_affine)


def _vision_backbone(b: SpecBuilder, config: Data2Vec2VisionConfig) -> None:
    d = config.hidden_size
    patch_dim = config.patch_embed_dim or d
    pe = b.scope("embeddings.patch_embeddings")
    pe.conv2d("projection", config.num_channels, patch_dim, (config.patch_size, config.patch_size))
    if patch_dim != d:
        pe.linear("dense", patch_dim, d)
    if config.use_fixed_positions:
        _frozen(b.scope("embeddings"), "position_embeddings", (1, config.num_patches, d), SincosInit("sincos"), False)
    _encoder(b, config)


def _audio_backbone(b: SpecBuilder, config: Data2Vec2AudioConfig) -> None:
    d = config.hidden_size
    in_ch = 1
    for i, (dim, kernel) in enumerate(zip(config.conv_dim, config.conv_kernel)):
        layer = b.scope(f"feature_extractor.conv_layers.{i}")
        layer.conv1d("conv", in_ch, dim, kernel, bias=config.conv_bias)
        if config.feat_extract_norm == "layer" or i == 0:
            layer.layer_norm("layer_norm", dim)  # GroupNorm(dim, dim) in "group" mode
        in_ch = dim
    proj = b.scope("feature_projection")
    proj.layer_norm("layer_norm", config.conv_dim[-1])
    proj.linear("projection", config.conv_dim[-1], d)
    enc = b.scope("encoder")
    if config.conv_pos_pre_layer_norm:
        enc.layer_norm("pos_conv_layer_norm", d)
    for i in range(config.num_conv_pos_embeddings):
        enc.scope(f"pos_conv_embed.layers.{i}").conv1d(
            "conv", d, d, config.conv_pos_kernel_size, groups=config.num_conv_pos_embedding_groups
        )
    _encoder(b, config)


def _text_backbone(b: SpecBuilder, config: Data2Vec2TextConfig) -> None:
    emb = b.scope("embeddings")
    emb.embedding("word_embeddings", config.vocab_size, config.hidden_size)
    if config.use_position_embeddings and config.use_learned_position_embeddings:
        emb.embedding("position_embeddings", config.position_table_rows, config.hidden_size)
    if config.use_embedding_layer_norm:
        emb.layer_norm("layer_norm", config.hidden_size)
    _encoder(b, config)


def _with_backbone(config, arch: str, backbone, base_prefix: str) -> SpecBuilder:
    """A builder holding the backbone: at the root for a base model, under ``base_prefix`` for a head."""
    root = SpecBuilder(config.initializer_range)
    backbone(root if arch.endswith("Model") else root.scope(base_prefix), config)
    return root


def _vision_spec(config: Data2Vec2VisionConfig, arch: str) -> WeightSpec:
    root = _with_backbone(config, arch, _vision_backbone, VISION.BASE_PREFIX)
    if arch != "Data2Vec2VisionModel":
        if config.use_fc_norm:
            root.layer_norm("fc_norm", config.hidden_size)
        root.linear("classifier", config.hidden_size, config.num_labels)
    return WeightSpec(arch, "vision2", VISION.BASE_PREFIX, root.out)


def _audio_spec(config: Data2Vec2AudioConfig, arch: str) -> WeightSpec:
    root = _with_backbone(config, arch, _audio_backbone, AUDIO.BASE_PREFIX)
    if arch != "Data2Vec2AudioModel":
        if arch == "Data2Vec2AudioForCTC":
            root.linear("lm_head", config.hidden_size, config.vocab_size)
        else:
            root.linear("projector", config.hidden_size, config.classifier_proj_size)
            root.linear("classifier", config.classifier_proj_size, config.num_labels)
    return WeightSpec(arch, "audio2", AUDIO.BASE_PREFIX, root.out)


def _text_spec(config: Data2Vec2TextConfig, arch: str) -> WeightSpec:
    root = _with_backbone(config, arch, _text_backbone, TEXT.BASE_PREFIX)
    if arch != "Data2Vec2TextModel":
        head = root.scope("classifier")
        head.linear("dense", config.hidden_size, config.classifier_width)
        head.linear("out_proj", config.classifier_width, config.num_labels)
    return WeightSpec(arch, "text2", TEXT.BASE_PREFIX, root.out)


def _family(base_prefix, architectures, config_class, builder) -> SimpleNamespace:
    def build(config, architecture, **options):
        if options:
            raise TypeError(f"{architecture} takes no spec options, got {sorted(options)}")
        if architecture not in architectures:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {architectures}")
        return builder(config, architecture)

    return SimpleNamespace(
        BASE_PREFIX=base_prefix,
        ARCHITECTURES=architectures,
        CONFIG_CLASS=config_class,
        H5_MODULE_RULES=(),
        H5_EMPTY_GROUPS={},
        build=build,
    )


VISION = _family(
    "data2vec2_vision",
    ("Data2Vec2VisionModel", "Data2Vec2VisionForImageClassification"),
    Data2Vec2VisionConfig,
    lambda c, a: _vision_spec(c, a),
)
AUDIO = _family(
    "data2vec2_audio",
    ("Data2Vec2AudioModel", "Data2Vec2AudioForCTC", "Data2Vec2AudioForSequenceClassification"),
    Data2Vec2AudioConfig,
    lambda c, a: _audio_spec(c, a),
)
TEXT = _family(
    "data2vec2_text",
    ("Data2Vec2TextModel", "Data2Vec2TextForSequenceClassification"),
    Data2Vec2TextConfig,
    lambda c, a: _text_spec(c, a),
)
FAMILIES = {"vision2": VISION, "audio2": AUDIO, "text2": TEXT}

__all__ = ["AUDIO", "FAMILIES", "TEXT", "VISION", "has_context_norm"]
