"""Weight spec of the BEiT-shaped vision family."""

from __future__ import annotations

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.models.checks import weighted_layer_sum_size
from d2v_common.spec.core import SpecBuilder, WeightSpec, fill

BASE_PREFIX = "data2vec_vision"
ARCHITECTURES = (
    "Data2VecVisionModel",
    "Data2VecVisionForImageClassification",
    "Data2VecVisionForSemanticSegmentation",
)

# HF's tf_model.h5 names the segmentation head's list items with a dot ("fpn1.0",
# "psp_modules/0.1", "lateral_convs.0"), except the auxiliary head's second and later convs,
# which it calls "conv_module_2", ...; "~" marks a dot that stays a dot (see layouts).
H5_MODULE_RULES = (
    (r"^auxiliary_head\.convs\.([1-9]\d*)", lambda m: f"auxiliary_head.conv_module_{int(m.group(1)) + 1}"),
    (r"^fpn(\d+)\.(\d+)", r"fpn\1~\2"),
    (r"psp_modules\.(\d+)\.(\d+)", r"psp_modules.\1~\2"),
    (r"(lateral_convs|fpn_convs|convs)\.(\d+)", r"\1~\2"),
)
# Weightless top-level layers HF's segmentation class lists in tf_model.h5, by position.
H5_EMPTY_GROUPS = {"Data2VecVisionForSemanticSegmentation": (("fpn1.3", "activation"), ("decode_head", "max_pooling2d"))}


def relative_bias_rows(window: tuple[int, int]) -> int:
    """Rows of a relative position bias table: every (dy, dx) pair plus 3 for the CLS token."""
    return (2 * window[0] - 1) * (2 * window[1] - 1) + 3


def _backbone(b: SpecBuilder, config: Data2VecVisionConfig, add_pooling_layer: bool) -> None:
    hidden, heads = config.hidden_size, config.num_attention_heads
    grid = config.patch_grid
    emb = b.scope("embeddings")
    emb.param("cls_token", (1, 1, hidden))
    if config.use_mask_token:
        emb.param("mask_token", (1, 1, hidden))
    if config.use_absolute_position_embeddings:
        emb.param("position_embeddings", (1, grid[0] * grid[1] + 1, hidden))
    emb.scope("patch_embeddings").conv2d("projection", config.num_channels, hidden, config.patch_size_hw)

    enc = b.scope("encoder")
    table_rows = relative_bias_rows(grid)
    if config.use_shared_relative_position_bias:
        enc.scope("relative_position_bias").param("relative_position_bias_table", (table_rows, heads))
    for i in range(config.num_hidden_layers):
        layer = enc.scope(f"layer.{i}")
        if config.layer_scale_init_value > 0:
            layer.param("lambda_1", (hidden,), fill(config.layer_scale_init_value))
            layer.param("lambda_2", (hidden,), fill(config.layer_scale_init_value))
        attn = layer.scope("attention.attention")
        attn.linear("query", hidden, hidden)
        attn.linear("key", hidden, hidden, bias=False)
        attn.linear("value", hidden, hidden)
        if config.use_relative_position_bias:
            attn.scope("relative_position_bias").param("relative_position_bias_table", (table_rows, heads))
        layer.scope("attention.output").linear("dense", hidden, hidden)
        layer.scope("intermediate").linear("dense", hidden, config.intermediate_size)
        layer.scope("output").linear("dense", config.intermediate_size, hidden)
        layer.layer_norm("layernorm_before", hidden)
        layer.layer_norm("layernorm_after", hidden)
    if not config.use_mean_pooling:
        b.layer_norm("layernorm", hidden)
    if add_pooling_layer and config.use_mean_pooling:
        b.scope("pooler").layer_norm("layernorm", hidden)


def _conv_module(b: SpecBuilder, name: str, in_ch: int, out_ch: int, kernel: int) -> None:
    """Conv (no bias) + BatchNorm, the segmentation heads' building block."""
    m = b.scope(name)
    m.conv2d("conv", in_ch, out_ch, (kernel, kernel), bias=False)
    m.batch_norm("bn", out_ch)


def _segmentation_heads(b: SpecBuilder, config: Data2VecVisionConfig) -> None:
    hidden, labels = config.hidden_size, config.num_labels
    b.conv_transpose2d("fpn1.0", hidden, hidden, (2, 2))
    b.batch_norm("fpn1.1", hidden)
    b.conv_transpose2d("fpn1.3", hidden, hidden, (2, 2))
    b.conv_transpose2d("fpn2.0", hidden, hidden, (2, 2))

    dec = b.scope("decode_head")
    dec.conv2d("classifier", hidden, labels, (1, 1))
    for i, _ in enumerate(config.pool_scales):
        _conv_module(dec, f"psp_modules.{i}.1", hidden, hidden, 1)
    _conv_module(dec, "bottleneck", hidden + len(config.pool_scales) * hidden, hidden, 3)
    for i in range(3):
        _conv_module(dec, f"lateral_convs.{i}", hidden, hidden, 1)
    for i in range(3):
        _conv_module(dec, f"fpn_convs.{i}", hidden, hidden, 3)
    _conv_module(dec, "fpn_bottleneck", 4 * hidden, hidden, 3)

    if config.use_auxiliary_head:
        aux = b.scope("auxiliary_head")
        channels = config.auxiliary_channels
        for i in range(config.auxiliary_num_convs):
            _conv_module(aux, f"convs.{i}", hidden if i == 0 else channels, channels, 3)
        if config.auxiliary_concat_input:
            _conv_module(aux, "conv_cat", hidden + channels, channels, 3)
        aux.conv2d("classifier", channels, labels, (1, 1))


def _layer_weights(root: SpecBuilder, config, architecture: str) -> None:
    """The weighted layer sum's ``layer_weights`` (uniform), when the head uses it."""
    size = weighted_layer_sum_size(config, architecture)
    if size:
        root.param("layer_weights", (size,), fill(1.0 / size))


def vision_spec(config: Data2VecVisionConfig, architecture: str, add_pooling_layer: bool = False) -> WeightSpec:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown vision architecture {architecture!r}; expected one of {ARCHITECTURES}")
    root = SpecBuilder(config.initializer_range)
    if architecture == "Data2VecVisionModel":
        _backbone(root, config, add_pooling_layer=add_pooling_layer)
    elif architecture == "Data2VecVisionForImageClassification":
        _backbone(root.scope(BASE_PREFIX), config, add_pooling_layer=True)
        if config.num_labels > 0:
            root.linear("classifier", config.hidden_size, config.num_labels)
        _layer_weights(root, config, architecture)
    else:
        config.segmentation_feature_indices()  # validates out_indices
        _backbone(root.scope(BASE_PREFIX), config, add_pooling_layer=False)
        _segmentation_heads(root, config)
    return WeightSpec(architecture, "vision", BASE_PREFIX, root.out)
