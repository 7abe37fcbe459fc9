"""Data2Vec vision (BEiT-shaped) in PyTorch: small blocks first, the three models last.

Module names equal HF's state-dict keys (checked against ``d2v_common.spec.vision`` at build
time). The Keras twin is ``d2v_tf/vision.py``, kept section for section.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.spec import weight_spec
from d2v_common.models.outputs import (
    EncoderRecord,
    Data2VecVisionModelOutputWithPooling,
    ImageClassifierOutput,
    SemanticSegmenterOutput,
    finish,
)
from d2v_common.models.vision import (
    check_image_class_labels,
    check_masked_positions,
    check_pixel_values,
    check_segmentation_labels,
    patch_grid,
    relative_position_index,
    stochastic_depth_rates,
)
from d2v_common.loader.pretrained import build_nested
from d2v_torch.base import Data2VecPreTrainedModel, weighted_layer_sum
from d2v_torch.layers import DenseActivation, DenseDropout
from d2v_torch.layers import (
    Activation, Linear, DropPath, attention, checkpointed, classification_loss, cross_entropy, expand_head_mask,
    split_heads, tensor_info,
)

# ------------------------------------------------------------------------------ embeddings


class Data2VecVisionPatchEmbeddings(nn.Module):
    """Non-overlapping patches -> vectors, with a strided convolution."""

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__()
        patch = config.patch_size_hw
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=patch, stride=patch)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(pixel_values)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class Data2VecVisionEmbeddings(nn.Module):
    """CLS token + patch vectors (masked ones replaced by the mask token) + absolute positions."""

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__()
        hidden = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden)) if config.use_mask_token else None
        self.patch_embeddings = Data2VecVisionPatchEmbeddings(config)
        grid = config.patch_grid
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, hidden))
            if config.use_absolute_position_embeddings
            else None
        )
        self.grid = grid
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def resized_position_embeddings(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for another patch grid (bicubic, as HF)."""
        table = self.position_embeddings
        if grid == self.grid:
            return table
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        dim = table.shape[-1]
        patch_pos = patch_pos.reshape(1, *self.grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None):
        x, grid = self.patch_embeddings(pixel_values)
        batch, seq, _ = x.shape
        if bool_masked_pos is not None:
            w = bool_masked_pos.unsqueeze(-1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.expand(batch, seq, -1) * w
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
        if self.position_embeddings is not None:
            x = x + self.resized_position_embeddings(grid)
        return self.dropout(x), grid


# ------------------------------------------------------------------------------- attention


class Data2VecVisionRelativePositionBias(nn.Module):
    """Learned bias per (dy, dx) offset and head, resampled to the input's patch grid."""

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, config.num_attention_heads))
        # The (N+1)^2 index is built once here (from_numpy stays on the CPU even while
        # from_pretrained builds on the meta device) and once per other grid in _index, so
        # forward is torch only: torch.compile, jit.trace and torch.export see a constant.
        index = torch.from_numpy(relative_position_index(grid).reshape(-1).copy())
        self.register_buffer("relative_position_index", index, persistent=False)
        self._other_grids: dict[tuple, torch.Tensor] = {}

    def _index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The flat index for ``grid`` (cached per grid and device for interpolate_pos_encoding)."""
        if grid == self.grid:
            return self.relative_position_index.to(device)
        key = (grid, str(device))
        if key not in self._other_grids:
            index = torch.from_numpy(relative_position_index(grid).reshape(-1).copy())
            self._other_grids[key] = index.to(device)
        return self._other_grids[key]

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, heads, N+1, N+1) bias for a ``grid`` of N patches."""
        table = self.relative_position_bias_table
        old_h, old_w = 2 * self.grid[0] - 1, 2 * self.grid[1] - 1
        new_h, new_w = 2 * grid[0] - 1, 2 * grid[1] - 1
        # HF reads the offset table as (width, height); we follow it to match its numbers.
        offsets = table[: old_h * old_w].reshape(1, old_w, old_h, -1).permute(0, 3, 1, 2)
        offsets = F.interpolate(offsets, size=(new_h, new_w), mode="bilinear", align_corners=False)
        offsets = offsets.permute(0, 2, 3, 1).reshape(new_h * new_w, -1)
        table = torch.cat([offsets, table[old_h * old_w :]], dim=0)
        n = grid[0] * grid[1] + 1
        index = self._index(tuple(int(g) for g in grid), table.device)
        return table[index].reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)


class Data2VecVisionSelfAttention(nn.Module):
    """Multi-head self-attention (the key has no bias): (B, N+1, D) -> (B, N+1, D) context, plus the
    attention weights when asked. The scores get the layer's relative position bias (when built
    with a ``grid``) and the encoder's ``shared_bias``.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid (rows, cols) for a per-layer relative position bias, or None for none.
    """

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int] | None):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden, bias=False)
        self.value = Linear(hidden, hidden)
        self.dropout = config.attention_probs_dropout_prob
        self.relative_position_bias = Data2VecVisionRelativePositionBias(config, grid) if grid else None

    def forward(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False):
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.query, self.key, self.value))
        bias = self.relative_position_bias(grid) if self.relative_position_bias is not None else None
        if shared_bias is not None:
            bias = shared_bias if bias is None else bias + shared_bias
        return attention(q, k, v, bias, head_mask, self.dropout, self.training, output_attentions)


class Data2VecVisionSelfOutput(DenseDropout):
    """Dense (hidden -> hidden) -> dropout on the attention context: (B, N+1, D) -> (B, N+1, D);
    the layer adds the residual.

    Args:
        config: the model's ``Data2VecVisionConfig``.
    """

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__(config.hidden_size, config.hidden_size, config.hidden_dropout_prob)


class Data2VecVisionAttention(nn.Module):
    """Self-attention followed by its output projection: (B, N+1, D) -> (B, N+1, D), plus the
    attention weights when asked.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid (rows, cols) for a per-layer relative position bias, or None for none.
    """

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int] | None):
        super().__init__()
        self.attention = Data2VecVisionSelfAttention(config, grid)
        self.output = Data2VecVisionSelfOutput(config)

    def forward(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False):
        context, weights = self.attention(x, grid, shared_bias, head_mask, output_attentions)
        return self.output(context), weights


# ---------------------------------------------------------------------------------- layers


class Data2VecVisionIntermediate(DenseActivation):
    """Dense to intermediate_size -> ``hidden_act``: (B, N+1, D) -> (B, N+1, intermediate_size).

    Args:
        config: the model's ``Data2VecVisionConfig``.
    """

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act)


class Data2VecVisionOutput(DenseDropout):
    """Dense back to hidden_size -> dropout: (B, N+1, intermediate_size) -> (B, N+1, D); the layer adds
    the residual.

    Args:
        config: the model's ``Data2VecVisionConfig``.
    """

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__(config.intermediate_size, config.hidden_size, config.hidden_dropout_prob)


class Data2VecVisionLayer(nn.Module):
    """Pre-norm transformer block with optional layer scale and drop path."""

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int] | None, drop_path: float):
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.attention = Data2VecVisionAttention(config, grid)
        self.intermediate = Data2VecVisionIntermediate(config)
        self.output = Data2VecVisionOutput(config)
        self.layernorm_before = nn.LayerNorm(hidden, eps=eps)
        self.layernorm_after = nn.LayerNorm(hidden, eps=eps)
        self.drop_path = DropPath(drop_path)
        # zeros as placeholders, as everywhere: post_init fills every tensor from the spec's init rule
        scale = config.layer_scale_init_value
        self.lambda_1 = nn.Parameter(torch.zeros(hidden)) if scale > 0 else None
        self.lambda_2 = nn.Parameter(torch.zeros(hidden)) if scale > 0 else None

    def forward(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False):
        attn, weights = self.attention(self.layernorm_before(x), grid, shared_bias, head_mask, output_attentions)
        if self.lambda_1 is not None:
            attn = self.lambda_1 * attn
        x = x + self.drop_path(attn)
        ff = self.output(self.intermediate(self.layernorm_after(x)))
        if self.lambda_2 is not None:
            ff = self.lambda_2 * ff
        return x + self.drop_path(ff), weights


class Data2VecVisionEncoder(nn.Module):
    """``num_hidden_layers`` pre-norm blocks, drop-path rates rising linearly to ``drop_path_rate``:
    (B, N+1, D) -> (B, N+1, D).

    Holds the shared relative position bias when ``use_shared_relative_position_bias``. Returns the
    last state and the recorded hidden states and attentions (None unless asked).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid of ``config.image_size`` (sizes the relative position bias tables).
    """

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int]):
        super().__init__()
        self.relative_position_bias = (
            Data2VecVisionRelativePositionBias(config, grid) if config.use_shared_relative_position_bias else None
        )
        per_layer_grid = grid if config.use_relative_position_bias else None
        rates = stochastic_depth_rates(config)
        self.layer = nn.ModuleList(
            [Data2VecVisionLayer(config, per_layer_grid, rates[i]) for i in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False

    def forward(self, x, grid, head_mask=None, output_attentions=False, output_hidden_states=False):
        shared_bias = self.relative_position_bias(grid) if self.relative_position_bias is not None else None
        head_masks = expand_head_mask(head_mask, len(self.layer), x.dtype)
        record = EncoderRecord(output_hidden_states, output_attentions)
        for layer, layer_head_mask in zip(self.layer, head_masks):
            record.layer_input(x)
            if self.gradient_checkpointing and self.training:
                x, weights = checkpointed(self, layer, x, grid, shared_bias, layer_head_mask, output_attentions)
            else:
                x, weights = layer(x, grid, shared_bias, layer_head_mask, output_attentions)
            record.layer_output(weights)
        record.finish(x)
        return x, record.hidden_states, record.attentions


class Data2VecVisionPooler(nn.Module):
    """Mean of the patch tokens then LayerNorm, or the CLS token."""

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__()
        self.layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_mean_pooling else None
        )

    def forward(self, x):
        if self.layernorm is not None:
            return self.layernorm(x[:, 1:].mean(dim=1))
        return x[:, 0]


# ------------------------------------------------------------------------ segmentation heads


class Data2VecVisionConvModule(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.bn(self.conv(x)))


class Data2VecVisionPyramidPoolingBlock(nn.Sequential):
    """Adaptive average pooling to (scale, scale) -> 1x1 conv module: (B, C, H, W) -> (B, C, scale, scale).

    Args:
        scale: the pooled map's height and width.
        channels: the input and output channel count.
    """

    def __init__(self, scale: int, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(scale), Data2VecVisionConvModule(channels, channels, 1))


class Data2VecVisionPyramidPoolingModule(nn.ModuleList):
    """Pool at several scales, convolve, upsample back to the input size."""

    def __init__(self, scales, channels: int):
        super().__init__([Data2VecVisionPyramidPoolingBlock(s, channels) for s in scales])

    def forward(self, x):
        size = x.shape[2:]
        return [F.interpolate(block(x), size=size, mode="bilinear", align_corners=False) for block in self]


class Data2VecVisionUperHead(nn.Module):
    """UperNet decode head: pyramid pooling on the last map + a top-down FPN over all maps."""

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__()
        hidden = config.hidden_size
        self.classifier = nn.Conv2d(hidden, config.num_labels, kernel_size=1)
        self.psp_modules = Data2VecVisionPyramidPoolingModule(config.pool_scales, hidden)
        self.bottleneck = Data2VecVisionConvModule(hidden * (1 + len(config.pool_scales)), hidden, 3, padding=1)
        self.lateral_convs = nn.ModuleList([Data2VecVisionConvModule(hidden, hidden, 1) for _ in range(3)])
        self.fpn_convs = nn.ModuleList([Data2VecVisionConvModule(hidden, hidden, 3, padding=1) for _ in range(3)])
        self.fpn_bottleneck = Data2VecVisionConvModule(4 * hidden, hidden, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        laterals = [conv(features[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            size = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=size, mode="bilinear", align_corners=False)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class Data2VecVisionFCNHead(nn.Module):
    """Auxiliary head: a few 3x3 conv modules on the third feature map, then a classifier."""

    in_index = 2

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__()
        hidden, channels = config.hidden_size, config.auxiliary_channels
        convs = [
            Data2VecVisionConvModule(hidden if i == 0 else channels, channels, 3, padding=1)
            for i in range(config.auxiliary_num_convs)
        ]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.conv_cat = (
            Data2VecVisionConvModule(hidden + channels, channels, 3, padding=1) if config.auxiliary_concat_input else None
        )
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classifier(out)


# ---------------------------------------------------------------------------------- models


class Data2VecVisionPreTrainedModel(Data2VecPreTrainedModel):
    """Base of the PyTorch vision classes: config class, input name (not built directly).

    Args:
        config: a ``Data2VecVisionConfig``; it sizes every layer.

    Examples:
    ```python no-run
    import torch
    from d2v_torch import Data2VecVisionConfig, Data2VecVisionModel, Data2VecVisionPreTrainedModel

    config = Data2VecVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, intermediate_size=64)
    model = Data2VecVisionModel(config)
    assert isinstance(model, Data2VecVisionPreTrainedModel)
    outputs = model(torch.zeros(1, 3, 32, 32))
    ```
    """

    config_class = Data2VecVisionConfig
    base_model_prefix = "data2vec_vision"
    main_input_name = "pixel_values"


class Data2VecVisionModel(Data2VecVisionPreTrainedModel):
    """The bare encoder: ``last_hidden_state`` (and ``pooler_output`` with a pooling layer)."""

    architecture = "Data2VecVisionModel"

    def __init__(self, config: Data2VecVisionConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        if add_pooling_layer:
            self.spec = weight_spec(config, self.architecture, add_pooling_layer=True)
        self.embeddings = Data2VecVisionEmbeddings(config)
        self.encoder = Data2VecVisionEncoder(config, config.patch_grid)
        self.layernorm = (
            None if config.use_mean_pooling else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        )
        self.pooler = Data2VecVisionPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @document_inputs("Data2VecVisionModel")
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        self._check_value_input("pixel_values", pixel_values)
        check_pixel_values(self.config, tuple(pixel_values.shape), str(pixel_values.dtype), interpolate_pos_encoding)
        if bool_masked_pos is not None:
            check_masked_positions(self.config, tuple(pixel_values.shape), tuple(bool_masked_pos.shape))
        x, grid = self.embeddings(pixel_values, bool_masked_pos)
        x, hidden_states, attentions = self.encoder(x, grid, head_mask, output_attentions, output_hidden_states)
        if self.layernorm is not None:
            x = self.layernorm(x)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = Data2VecVisionModelOutputWithPooling(x, pooled, hidden_states, attentions)
        return finish(out, return_dict)

    def forward_features(self, pixel_values, head_mask=None, output_attentions=None, output_hidden_states=None,
                         interpolate_pos_encoding=False, feature_layers=()):
        """The encoder call every head makes (the backbone half of a task model).

        Args:
            pixel_values ... interpolate_pos_encoding: as in ``forward``.
            feature_layers: indices into ``hidden_states`` (0 = embeddings) whose patch tokens
                come back as feature maps; asking for any keeps every hidden state.

        Returns:
            ``(outputs, feature_maps)``: the model output as an object, and one
            ``(batch, hidden_size, rows, cols)`` map per entry of ``feature_layers``.
        """
        outputs = self(
            pixel_values, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=True if feature_layers else output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
        )
        rows, cols = patch_grid(self.config, pixel_values.shape)
        batch = pixel_values.shape[0]
        maps = [outputs.hidden_states[i][:, 1:].transpose(1, 2).reshape(batch, -1, rows, cols) for i in feature_layers]
        return outputs, maps


class Data2VecVisionForImageClassification(Data2VecVisionPreTrainedModel):
    """Encoder + pooled representation + linear classifier."""

    architecture = "Data2VecVisionForImageClassification"

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.data2vec_vision = build_nested(Data2VecVisionModel, config, add_pooling_layer=True)
        self.classifier = Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self._init_layer_weights()
        self.post_init()

    @document_inputs("Data2VecVisionForImageClassification")
    def forward(self, pixel_values: torch.Tensor | None = None, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        weighted = self.layer_weights is not None  # the weighted sum needs (and returns) every hidden state
        base, _ = self.data2vec_vision.forward_features(
            pixel_values, head_mask, output_attentions, True if weighted else output_hidden_states,
            interpolate_pos_encoding,
        )
        pooled = base.pooler_output
        if weighted:  # the weighted sum takes the last encoder state's place before the final norm and pooling
            vision = self.data2vec_vision
            x = weighted_layer_sum(base.hidden_states, self.layer_weights)
            pooled = vision.pooler(vision.layernorm(x) if vision.layernorm is not None else x)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            check_image_class_labels(self.config, tensor_info(labels), logits.shape[0])
            loss = classification_loss(logits, labels, self.config)
        return self._head_output(ImageClassifierOutput, loss, logits, base, return_dict)


class Data2VecVisionForSemanticSegmentation(Data2VecVisionPreTrainedModel):
    """Encoder features at ``out_indices`` -> FPN -> UperNet (+ optional FCN auxiliary head)."""

    architecture = "Data2VecVisionForSemanticSegmentation"

    def __init__(self, config: Data2VecVisionConfig):
        super().__init__(config)
        self.feature_indices = config.segmentation_feature_indices()
        hidden = config.hidden_size
        self.data2vec_vision = build_nested(Data2VecVisionModel, config, add_pooling_layer=False)
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2),
            nn.BatchNorm2d(hidden),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.decode_head = Data2VecVisionUperHead(config)
        self.auxiliary_head = Data2VecVisionFCNHead(config) if config.use_auxiliary_head else None
        self.post_init()

    def compute_loss(self, logits, auxiliary_logits, labels):
        size = labels.shape[-2:]
        ignore = self.config.semantic_loss_ignore_index
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = cross_entropy(up, labels, ignore)
        if auxiliary_logits is not None:
            up_aux = F.interpolate(auxiliary_logits, size=size, mode="bilinear", align_corners=False)
            loss = loss + self.config.auxiliary_loss_weight * cross_entropy(up_aux, labels, ignore)
        return loss

    @document_inputs("Data2VecVisionForSemanticSegmentation")
    def forward(self, pixel_values: torch.Tensor | None = None, head_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, interpolate_pos_encoding: bool = False,
                return_dict: bool | None = None):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        if labels is not None:
            check_segmentation_labels(self.config, tensor_info(labels), pixel_values.shape[0])
        base, features = self.data2vec_vision.forward_features(
            pixel_values, head_mask, output_attentions, True, interpolate_pos_encoding, self.feature_indices
        )
        ops = [self.fpn1, self.fpn2, self.fpn3, self.fpn4]
        features = [op(f) for op, f in zip(ops, features)]
        logits = self.decode_head(features)
        auxiliary_logits = self.auxiliary_head(features) if self.auxiliary_head is not None else None
        loss = self.compute_loss(logits, auxiliary_logits, labels) if labels is not None else None
        out = SemanticSegmenterOutput(
            loss, logits, base.hidden_states if output_hidden_states else None, base.attentions
        )
        return finish(out, return_dict)


__all__ = [
    "Data2VecVisionForImageClassification", "Data2VecVisionForSemanticSegmentation", "Data2VecVisionModel",
    "Data2VecVisionPreTrainedModel",
]
