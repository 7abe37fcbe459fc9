"""Data2Vec vision (BEiT-shaped) in Keras 3: small blocks first, the three models last.

Twin of ``d2v_torch/vision.py``, section for section. Inputs are NCHW like HF; inside, maps are
NHWC. None of HF TF's known bugs are reproduced: the numbers follow the PyTorch classes.
"""

from __future__ import annotations

import keras
from keras import ops

from d2v_common.configs import Data2VecVisionConfig
from d2v_common.models.docstrings import document_inputs
from d2v_common.models.interpolation import bicubic_matrix, bilinear_matrix
from d2v_common.models.outputs import (
    EncoderRecord,
    Data2VecVisionModelOutputWithPooling,
    ImageClassifierOutput,
    SemanticSegmenterOutput,
    finish,
)
from d2v_common.loader.pretrained import build_nested
from d2v_common.spec import weight_spec
from d2v_common.models.vision import (
    check_image_class_labels,
    check_masked_positions,
    check_pixel_values,
    check_segmentation_labels,
    patch_grid,
    relative_position_index,
    stochastic_depth_rates,
)
from d2v_tf import backend
from d2v_tf.base import TFData2VecPreTrainedModel, count_not_equal, unpack_inputs, weighted_layer_sum
from d2v_tf.checkpointing import CheckpointingEncoder
from d2v_tf.layers import DenseActivation, DenseDropout
from d2v_tf.layers import (
    Layer, Activation, BatchNorm, Conv2d, ConvTranspose2d, DropPath, Dropout, LayerNorm, Linear, attention,
    classification_loss, cross_entropy, expand_head_mask, resize2d, split_heads, tensor_info,
)

# ------------------------------------------------------------------------------ embeddings


class TFData2VecVisionPatchEmbeddings(Layer):
    """Non-overlapping patches -> vectors, with a strided convolution: (B, H, W, C) NHWC -> (B, N, D),
    returned with the patch grid (rows, cols).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(**kwargs)
        patch = config.patch_size_hw
        self.projection = Conv2d(config.num_channels, config.hidden_size, kernel_size=patch, stride=patch)

    def call(self, pixel_values_nhwc):
        x = self.projection(pixel_values_nhwc)
        grid = (int(x.shape[1]), int(x.shape[2]))
        return ops.reshape(x, (ops.shape(x)[0], grid[0] * grid[1], x.shape[-1])), grid


class TFData2VecVisionEmbeddings(Layer):
    """CLS token + patch vectors (masked ones replaced by the mask token) + absolute positions:
    (B, H, W, C) NHWC -> (B, N+1, D), returned with the patch grid. Positions are resampled
    (bicubic) for another grid.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.cls_token = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="cls_token")
        self.mask_token = (
            self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="mask_token")
            if config.use_mask_token
            else None
        )
        self.patch_embeddings = TFData2VecVisionPatchEmbeddings(config)
        grid = config.patch_grid
        self.position_embeddings = (
            self.add_weight(shape=(1, grid[0] * grid[1] + 1, hidden), initializer="zeros", name="position_embeddings")
            if config.use_absolute_position_embeddings
            else None
        )
        self.grid = grid
        self.dropout = Dropout(config.hidden_dropout_prob)

    def resized_position_embeddings(self, grid):
        table = ops.cast(self.position_embeddings, self.compute_dtype)
        if grid == self.grid:
            return table
        cls_pos, patch_pos = table[:, :1], table[:, 1:]
        dim = table.shape[-1]
        patch_pos = ops.reshape(patch_pos, (1, *self.grid, dim))
        mh = ops.cast(bicubic_matrix(self.grid[0], grid[0]), table.dtype)
        mw = ops.cast(bicubic_matrix(self.grid[1], grid[1]), table.dtype)
        patch_pos = ops.einsum("oh,bhwc,pw->bopc", mh, patch_pos, mw)
        return ops.concatenate([cls_pos, ops.reshape(patch_pos, (1, -1, dim))], axis=1)

    def call(self, pixel_values_nhwc, bool_masked_pos=None, training=False):
        x, grid = self.patch_embeddings(pixel_values_nhwc)
        batch = ops.shape(x)[0]
        if bool_masked_pos is not None:
            w = ops.cast(bool_masked_pos, x.dtype)[..., None]
            x = x * (1 - w) + ops.cast(self.mask_token, x.dtype) * w
        cls = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (batch, 1, x.shape[-1]))
        x = ops.concatenate([cls, x], axis=1)
        if self.position_embeddings is not None:
            x = x + self.resized_position_embeddings(grid)
        return self.dropout(x, training=training), grid


# ------------------------------------------------------------------------------- attention


class TFData2VecVisionRelativePositionBias(Layer):
    """Learned bias per (dy, dx) offset and head, resampled to the input's patch grid.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid (rows, cols) the bias table is sized for.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, grid: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.grid = grid
        rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
        self.relative_position_bias_table = self.add_weight(
            shape=(rows, config.num_attention_heads), initializer="zeros", name="relative_position_bias_table",
            autocast=False,  # the bias is added to float32 scores
        )

    def call(self, grid):
        return self.bias_for(grid)

    def bias_for(self, grid):
        """(1, heads, N+1, N+1) bias for a ``grid`` of N patches (float32)."""
        table = ops.cast(self.relative_position_bias_table, "float32")
        old_h, old_w = 2 * self.grid[0] - 1, 2 * self.grid[1] - 1
        new_h, new_w = 2 * grid[0] - 1, 2 * grid[1] - 1
        # HF reads the offset table as (width, height); we follow it to match its numbers.
        offsets = ops.reshape(table[: old_h * old_w], (1, old_w, old_h, -1))
        mh, mw = bilinear_matrix(old_w, new_h), bilinear_matrix(old_h, new_w)
        offsets = ops.einsum("oh,bhwc,pw->bopc", mh, offsets, mw)
        table = ops.concatenate([ops.reshape(offsets, (new_h * new_w, -1)), table[old_h * old_w :]], axis=0)
        n = grid[0] * grid[1] + 1
        bias = ops.take(table, relative_position_index(grid).reshape(-1), axis=0)
        return ops.transpose(ops.reshape(bias, (n, n, -1)), (2, 0, 1))[None]


class TFData2VecVisionSelfAttention(Layer):
    """Multi-head self-attention (the key has no bias): (B, N+1, D) -> (B, N+1, D) context, plus the
    attention weights when asked. The scores get the layer's relative position bias (when built
    with a ``grid``) and the encoder's ``shared_bias``.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid (rows, cols) for a per-layer relative position bias, or None for none.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, grid, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden, bias=False)
        self.value = Linear(hidden, hidden)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.relative_position_bias = TFData2VecVisionRelativePositionBias(config, grid) if grid else None

    def call(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False, training=False):
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.query, self.key, self.value))
        bias = self.relative_position_bias.bias_for(grid) if self.relative_position_bias is not None else None
        if shared_bias is not None:
            bias = shared_bias if bias is None else bias + shared_bias
        return attention(q, k, v, bias, head_mask, self.dropout, training, output_attentions)


class TFData2VecVisionSelfOutput(DenseDropout):
    """Dense (hidden -> hidden) -> dropout on the attention context: (B, N+1, D) -> (B, N+1, D);
    the layer adds the residual.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(config.hidden_size, config.hidden_size, config.hidden_dropout_prob, **kwargs)


class TFData2VecVisionAttention(Layer):
    """Self-attention followed by its output projection: (B, N+1, D) -> (B, N+1, D), plus the
    attention weights when asked.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid (rows, cols) for a per-layer relative position bias, or None for none.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, grid, **kwargs):
        super().__init__(**kwargs)
        self.attention = TFData2VecVisionSelfAttention(config, grid)
        self.output_ = TFData2VecVisionSelfOutput(config)

    def call(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False, training=False):
        context, weights = self.attention(
            x, grid=grid, shared_bias=shared_bias, head_mask=head_mask, output_attentions=output_attentions,
            training=training,
        )
        return self.output_(context, training=training), weights


# ---------------------------------------------------------------------------------- layers


class TFData2VecVisionIntermediate(DenseActivation):
    """Dense to intermediate_size -> ``hidden_act``: (B, N+1, D) -> (B, N+1, intermediate_size).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(config.hidden_size, config.intermediate_size, config.hidden_act, **kwargs)


class TFData2VecVisionOutput(DenseDropout):
    """Dense back to hidden_size -> dropout: (B, N+1, intermediate_size) -> (B, N+1, D); the layer adds
    the residual.

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(config.intermediate_size, config.hidden_size, config.hidden_dropout_prob, **kwargs)


class TFData2VecVisionLayer(Layer):
    """Pre-norm transformer block with optional layer scale and drop path: (B, N+1, D) -> (B, N+1, D).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid for a per-layer relative position bias, or None for none.
        drop_path: this layer's drop-path (stochastic depth) rate.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, grid, drop_path: float, **kwargs):
        super().__init__(**kwargs)
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.attention = TFData2VecVisionAttention(config, grid)
        self.intermediate = TFData2VecVisionIntermediate(config)
        self.output_ = TFData2VecVisionOutput(config)
        self.layernorm_before = LayerNorm(hidden, eps=eps)
        self.layernorm_after = LayerNorm(hidden, eps=eps)
        self.drop_path = DropPath(drop_path)
        scale = config.layer_scale_init_value
        make = lambda n: self.add_weight(shape=(hidden,), initializer="zeros", name=n)  # noqa: E731
        self.lambda_1 = make("lambda_1") if scale > 0 else None
        self.lambda_2 = make("lambda_2") if scale > 0 else None

    def call(self, x, grid, shared_bias=None, head_mask=None, output_attentions=False, training=False):
        attn, weights = self.attention(
            self.layernorm_before(x), grid=grid, shared_bias=shared_bias, head_mask=head_mask,
            output_attentions=output_attentions, training=training,
        )
        if self.lambda_1 is not None:
            attn = self.lambda_1 * attn
        x = x + self.drop_path(attn, training=training)
        ff = self.output_(self.intermediate(self.layernorm_after(x)), training=training)
        if self.lambda_2 is not None:
            ff = self.lambda_2 * ff
        return x + self.drop_path(ff, training=training), weights


class TFData2VecVisionEncoder(CheckpointingEncoder, Layer):
    """``num_hidden_layers`` pre-norm blocks, drop-path rates rising linearly to ``drop_path_rate``:
    (B, N+1, D) -> (B, N+1, D).

    Holds the shared relative position bias when ``use_shared_relative_position_bias``. Returns the
    last state and the recorded hidden states and attentions (None unless asked).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        grid: the patch grid of ``config.image_size`` (sizes the relative position bias tables).
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, grid, **kwargs):
        super().__init__(**kwargs)
        self.relative_position_bias = (
            TFData2VecVisionRelativePositionBias(config, grid) if config.use_shared_relative_position_bias else None
        )
        per_layer_grid = grid if config.use_relative_position_bias else None
        rates = stochastic_depth_rates(config)
        self.layer = [TFData2VecVisionLayer(config, per_layer_grid, rates[i]) for i in range(config.num_hidden_layers)]
        self.init_checkpointing()

    def call(self, x, grid, head_mask=None, output_attentions=False, output_hidden_states=False, training=False):
        shared_bias = self.relative_position_bias.bias_for(grid) if self.relative_position_bias is not None else None
        head_masks = expand_head_mask(head_mask, len(self.layer))
        record = EncoderRecord(output_hidden_states, output_attentions)
        for layer, layer_head_mask in zip(self.layer, head_masks):
            record.layer_input(x)
            x, weights = self.call_layer(
                layer, x, dict(shared_bias=shared_bias, head_mask=layer_head_mask), training,
                grid=grid, output_attentions=output_attentions,
            )
            record.layer_output(weights)
        record.finish(x)
        return x, record.hidden_states, record.attentions


class TFData2VecVisionPooler(Layer):
    """Mean of the patch tokens then LayerNorm, or the CLS token: (B, N+1, D) -> (B, D).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(**kwargs)
        self.layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_mean_pooling else None

    def call(self, x):
        if self.layernorm is not None:
            return self.layernorm(ops.mean(x[:, 1:], axis=1))
        return x[:, 0]


# ------------------------------------------------------------------------ segmentation heads


class TFData2VecVisionConvModule(Layer):
    """Conv (no bias) -> BatchNorm -> ReLU, on NHWC."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.conv = Conv2d(in_ch, out_ch, kernel_size=kernel, padding=padding, bias=False)
        self.bn = BatchNorm(out_ch)

    def call(self, x, training=False):
        return ops.relu(self.bn(self.conv(x), training=training))


class TFData2VecVisionAdaptiveAvgPool(Layer):
    """Adaptive average pooling to a fixed map: (B, H, W, C) -> (B, scale, scale, C).

    Args:
        scale: the output map's height and width.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, scale: int, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return resize2d(x, (self.scale, self.scale), "adaptive_avg")


def pyramid_pooling_block(scale: int, channels: int) -> list:
    """Adaptive pool then conv module; a list so the weights sit at ``<i>.1.conv`` as in HF."""
    return [TFData2VecVisionAdaptiveAvgPool(scale), TFData2VecVisionConvModule(channels, channels, 1)]


class TFData2VecVisionUperHead(Layer):
    """UperNet decode head: pyramid pooling on the last map + a top-down FPN over all maps.

    Four NHWC feature maps (B, h_i, w_i, D) -> logits (B, h_0, w_0, num_labels).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(**kwargs)
        hidden = config.hidden_size
        self.classifier = Conv2d(hidden, config.num_labels, kernel_size=1)
        self.psp_modules = [pyramid_pooling_block(s, hidden) for s in config.pool_scales]
        self.bottleneck = TFData2VecVisionConvModule(hidden * (1 + len(config.pool_scales)), hidden, 3, padding=1)
        self.lateral_convs = [TFData2VecVisionConvModule(hidden, hidden, 1) for _ in range(3)]
        self.fpn_convs = [TFData2VecVisionConvModule(hidden, hidden, 3, padding=1) for _ in range(3)]
        self.fpn_bottleneck = TFData2VecVisionConvModule(4 * hidden, hidden, 3, padding=1)

    def call(self, features, training=False):
        top = features[-1]
        size = (top.shape[1], top.shape[2])
        pooled = [resize2d(conv(pool(top), training=training), size) for pool, conv in self.psp_modules]
        laterals = [conv(features[i], training=training) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(ops.concatenate([top, *pooled], axis=-1), training=training))
        for i in range(len(laterals) - 1, 0, -1):
            prev = laterals[i - 1]
            laterals[i - 1] = prev + resize2d(laterals[i], (prev.shape[1], prev.shape[2]))
        outs = [self.fpn_convs[i](laterals[i], training=training) for i in range(len(laterals) - 1)] + [laterals[-1]]
        size = (outs[0].shape[1], outs[0].shape[2])
        outs = [outs[0]] + [resize2d(o, size) for o in outs[1:]]
        return self.classifier(self.fpn_bottleneck(ops.concatenate(outs, axis=-1), training=training))


class TFData2VecVisionFCNHead(Layer):
    """Auxiliary head: a few 3x3 conv modules on the third feature map, then a classifier.

    NHWC feature maps -> logits (B, h_2, w_2, num_labels).

    Args:
        config: the model's ``Data2VecVisionConfig``.
        **kwargs: passed to ``keras.layers.Layer`` (``name`` ...).
    """

    in_index = 2

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(**kwargs)
        hidden, channels = config.hidden_size, config.auxiliary_channels
        self.convs = [
            TFData2VecVisionConvModule(hidden if i == 0 else channels, channels, 3, padding=1)
            for i in range(config.auxiliary_num_convs)
        ]
        self.conv_cat = (
            TFData2VecVisionConvModule(hidden + channels, channels, 3, padding=1)
            if config.auxiliary_concat_input
            else None
        )
        self.classifier = Conv2d(channels, config.num_labels, kernel_size=1)

    def call(self, features, training=False):
        x = features[self.in_index]
        out = x
        for conv in self.convs:
            out = conv(out, training=training)
        if self.conv_cat is not None:
            out = self.conv_cat(ops.concatenate([x, out], axis=-1), training=training)
        return self.classifier(out)


# ---------------------------------------------------------------------------------- models


class TFData2VecVisionPreTrainedModel(TFData2VecPreTrainedModel):
    """Base of the Keras vision classes: config class and input name (not built directly).

    Args:
        config: a ``Data2VecVisionConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).
    """

    config_class = Data2VecVisionConfig
    base_model_prefix = "data2vec_vision"
    main_input_name = "pixel_values"


def _to_nhwc(config, pixel_values, interpolate_pos_encoding):
    pixel_values = ops.convert_to_tensor(pixel_values)
    check_pixel_values(config, tuple(pixel_values.shape), str(pixel_values.dtype), interpolate_pos_encoding)
    return ops.transpose(pixel_values, (0, 2, 3, 1))


class TFData2VecVisionModel(TFData2VecVisionPreTrainedModel):
    """The bare vision encoder (BEiT-style): ``last_hidden_state``, and ``pooler_output`` with a pooling layer.

    Args:
        config: a ``Data2VecVisionConfig`` (HF's fields and defaults); it sizes every layer.
        add_pooling_layer: build the pooler (HF's default: True for text, False for vision).
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``Data2VecVisionModelOutputWithPooling`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecVisionModel"

    def __init__(self, config: Data2VecVisionConfig, add_pooling_layer: bool = False, **kwargs):
        super().__init__(config, **kwargs)
        self.add_pooling_layer = add_pooling_layer
        if add_pooling_layer:
            self.spec = weight_spec(config, self.architecture, add_pooling_layer=True)
        self.embeddings = TFData2VecVisionEmbeddings(config)
        self.encoder = TFData2VecVisionEncoder(config, config.patch_grid)
        self.layernorm = None if config.use_mean_pooling else LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = TFData2VecVisionPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_config(self) -> dict:
        return {**super().get_config(), "add_pooling_layer": self.add_pooling_layer}

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    @unpack_inputs
    @document_inputs("Data2VecVisionModel")
    def call(self, pixel_values=None, bool_masked_pos=None, head_mask=None, output_attentions=None,
             output_hidden_states=None, interpolate_pos_encoding=False, return_dict=None, training=False):
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        x = _to_nhwc(self.config, pixel_values, interpolate_pos_encoding)
        if bool_masked_pos is not None:
            check_masked_positions(self.config, tuple(pixel_values.shape), tuple(bool_masked_pos.shape))
        x, grid = self.embeddings(x, bool_masked_pos=bool_masked_pos, training=training)
        x, hidden_states, attentions = self.encoder(
            x, grid=grid, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, training=training,
        )
        if self.layernorm is not None:
            x = self.layernorm(x)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = Data2VecVisionModelOutputWithPooling(x, pooled, hidden_states, attentions)
        return finish(out, return_dict)

    def forward_features(self, pixel_values, head_mask=None, output_attentions=None, output_hidden_states=None,
                         interpolate_pos_encoding=False, feature_layers=(), training=False):
        """The encoder call every head makes (the backbone half of a task model).

        Args:
            pixel_values ... interpolate_pos_encoding, training: as in ``call``.
            feature_layers: indices into ``hidden_states`` (0 = embeddings) whose patch tokens
                come back as feature maps; asking for any keeps every hidden state.

        Returns:
            ``(outputs, feature_maps)``: the model output as an object, and one
            ``(batch, rows, cols, hidden_size)`` map per entry of ``feature_layers``.
        """
        pixel_values = ops.convert_to_tensor(pixel_values)
        outputs = self(
            pixel_values, head_mask=head_mask, output_attentions=output_attentions,
            output_hidden_states=True if feature_layers else output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, training=training,
        )
        rows, cols = patch_grid(self.config, pixel_values.shape) if feature_layers else (None, None)
        maps = [
            ops.reshape(outputs.hidden_states[i][:, 1:], (-1, rows, cols, self.config.hidden_size))
            for i in feature_layers
        ]
        return outputs, maps


class TFData2VecVisionForImageClassification(TFData2VecVisionPreTrainedModel):
    """Vision encoder + pooled representation + linear classifier.

    Args:
        config: a ``Data2VecVisionConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``ImageClassifierOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecVisionForImageClassification"

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.num_labels = config.num_labels
        self.data2vec_vision = build_nested(TFData2VecVisionModel, config, add_pooling_layer=True)
        self.classifier = Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else None
        self._init_layer_weights()
        self.post_init()

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        check_image_class_labels(self.config, tensor_info(labels), outputs.logits.shape[0])
        return classification_loss(outputs.logits, labels, self.config)

    @unpack_inputs
    @document_inputs("Data2VecVisionForImageClassification")
    def call(self, pixel_values=None, head_mask=None, labels=None, output_attentions=None, output_hidden_states=None,
             interpolate_pos_encoding=False, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        weighted = self.layer_weights is not None  # the weighted sum needs (and returns) every hidden state
        base, _ = self.data2vec_vision.forward_features(
            pixel_values, head_mask, output_attentions, True if weighted else output_hidden_states,
            interpolate_pos_encoding, training=training,
        )
        pooled = base.pooler_output
        if weighted:  # the weighted sum takes the last encoder state's place before the final norm and pooling
            vision = self.data2vec_vision
            x = weighted_layer_sum(base.hidden_states, self.layer_weights)
            pooled = vision.pooler(vision.layernorm(x) if vision.layernorm is not None else x)
        logits = self.classifier(pooled) if self.classifier is not None else pooled
        out = ImageClassifierOutput(None, logits, base.hidden_states, base.attentions)
        return self._finish_with_loss(out, labels, return_dict)


class TFData2VecVisionForSemanticSegmentation(TFData2VecVisionPreTrainedModel):
    """Encoder features at ``out_indices`` -> FPN -> UperNet (+ optional FCN auxiliary head).

    Args:
        config: a ``Data2VecVisionConfig`` (HF's fields and defaults); it sizes every layer.
        **kwargs: passed to ``keras.Model`` (``name`` ...).

    Call arguments are HF's, as in the PyTorch class of the same name (without "TF");
    ``labels`` (or ``x["labels"]`` in ``fit``) adds the loss.

    Returns:
        A ``SemanticSegmenterOutput`` (a tuple with ``return_dict=False``).
    """

    architecture = "Data2VecVisionForSemanticSegmentation"

    def __init__(self, config: Data2VecVisionConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.feature_indices = config.segmentation_feature_indices()
        hidden = config.hidden_size
        self.data2vec_vision = build_nested(TFData2VecVisionModel, config, add_pooling_layer=False)
        self.fpn1 = [
            ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2),
            BatchNorm(hidden),
            Activation("gelu"),
            ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2),
        ]
        self.fpn2 = [ConvTranspose2d(hidden, hidden, kernel_size=2, stride=2)]
        self.decode_head = TFData2VecVisionUperHead(config)
        self.auxiliary_head = TFData2VecVisionFCNHead(config) if config.use_auxiliary_head else None
        self.post_init()

    def _fpn(self, i: int, x, training):
        if i == 0:
            conv1, bn, act, conv2 = self.fpn1
            return conv2(act(bn(conv1(x), training=training)))
        if i == 1:
            return self.fpn2[0](x)
        if i == 2:
            return x
        return ops.max_pool(x, pool_size=2, strides=2, padding="valid")

    def loss_from_outputs(self, outputs, labels):
        labels = ops.convert_to_tensor(labels)
        check_segmentation_labels(self.config, tensor_info(labels), outputs.logits.shape[0])
        return self.compute_segmentation_loss(outputs.logits, outputs._auxiliary_logits, labels)

    def loss_count(self, x, labels):
        return count_not_equal(labels, self.config.semantic_loss_ignore_index)

    def compute_segmentation_loss(self, logits_nchw, auxiliary_nchw, labels):
        size = (labels.shape[-2], labels.shape[-1])
        ignore = self.config.semantic_loss_ignore_index

        def up(logits):  # NCHW -> upsampled NHWC, classes last for the cross-entropy
            return resize2d(ops.transpose(logits, (0, 2, 3, 1)), size)

        loss = cross_entropy(up(logits_nchw), labels, ignore)
        if auxiliary_nchw is not None:
            loss = loss + self.config.auxiliary_loss_weight * cross_entropy(up(auxiliary_nchw), labels, ignore)
        return loss

    @unpack_inputs
    @document_inputs("Data2VecVisionForSemanticSegmentation")
    def call(self, pixel_values=None, head_mask=None, labels=None, output_attentions=None, output_hidden_states=None,
             interpolate_pos_encoding=False, return_dict=None, training=False):
        return_dict = self._return_dict_default if return_dict is None else return_dict
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states")
        pixel_values = ops.convert_to_tensor(pixel_values)
        if labels is not None:
            labels = ops.convert_to_tensor(labels)
            check_segmentation_labels(self.config, tensor_info(labels), pixel_values.shape[0])
        base, features = self.data2vec_vision.forward_features(
            pixel_values, head_mask, output_attentions, True, interpolate_pos_encoding, self.feature_indices,
            training=training,
        )
        features = [self._fpn(i, f, training) for i, f in enumerate(features)]
        logits = ops.transpose(self.decode_head(features, training=training), (0, 3, 1, 2))
        auxiliary = None
        if self.auxiliary_head is not None:
            auxiliary = ops.transpose(self.auxiliary_head(features, training=training), (0, 3, 1, 2))
        out = SemanticSegmenterOutput(
            None, logits, base.hidden_states if output_hidden_states else None, base.attentions
        )
        out._auxiliary_logits = auxiliary  # for the loss when labels come separately (Keras fit)
        if labels is not None:
            out.loss = self.compute_segmentation_loss(logits, auxiliary, labels)
        return finish(out, return_dict)


__all__ = [
    "TFData2VecVisionForImageClassification", "TFData2VecVisionForSemanticSegmentation", "TFData2VecVisionModel",
    "TFData2VecVisionPreTrainedModel",
]
