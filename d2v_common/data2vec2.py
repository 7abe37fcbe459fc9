"""data2vec 2.0: the three configs and the framework-neutral formulas both model packages use.

data2vec 2.0 (Baevski et al. 2022) keeps 1.0's modality front ends but changes the encoder:

* post-LN transformer blocks with one fused ``qkv`` projection (``x = LN1(x + attn(x))``,
  ``x = LN2(x + mlp(x))``), no final LayerNorm (unless ``layer_norm_first``);
* a per-modality "context encoder" between the front end and the shared blocks: a LayerNorm
  then ``num_prenet_layers`` blocks, optional learned extra tokens (the image CLS token) first;
* images: fixed 2-D sin-cos positions (stored in the checkpoint), mean-pool + LayerNorm head;
* audio: no zeroing of padded frames, optional ALiBi attention bias with a learned per-head
  (optionally per-layer) scale;
* text: RoBERTa-style embeddings without token types (fairseq positions: pad + cumsum).

Everything the PyTorch and Keras twins must compute identically that is not a tensor op
(ALiBi slopes and distances, sin-cos tables, frame lengths, input checks) lives here.
"""

from __future__ import annotations

import math
import numpy as np

from d2v_common.configs import ACTIVATIONS, CONFIG_CLASSES, Data2VecConfigBase, Field
from d2v_common.models.input_types import PIXEL_AXES, check_main_input

# ------------------------------------------------------------------------------- configs

# Fields every data2vec 2.0 config has (the shared transformer and its ALiBi options).
_COMMON = {
    "hidden_size": Field(768, "int"),
    "num_hidden_layers": Field(12, "int"),
    "num_attention_heads": Field(12, "int"),
    "intermediate_size": Field(3072, "int"),
    "hidden_act": Field("gelu", "str"),
    "layer_norm_eps": Field(1e-5, "float"),
    # LayerNorms of the blocks and context encoder have weight and bias (fairseq norm_affine)
    "layer_norm_affine": Field(True, "bool"),
    # pre-LN blocks plus a final LayerNorm (fairseq layer_norm_first; released models: False)
    "layer_norm_first": Field(False, "bool"),
    "num_prenet_layers": Field(0, "int"),
    "num_extra_tokens": Field(0, "int"),
    "hidden_dropout": Field(0.0, "float"),
    "attention_dropout": Field(0.0, "float"),
    "activation_dropout": Field(0.0, "float"),
    "post_mlp_dropout": Field(0.0, "float"),
    "initializer_range": Field(0.02, "float"),
    "use_alibi": Field(False, "bool"),
    "alibi_scale": Field(1.0, "float"),
    "alibi_scale_per_head": Field(False, "bool"),
    "alibi_scale_per_layer": Field(False, "bool"),
    "learned_alibi_scale": Field(False, "bool"),
    # heads that receive the ALiBi bias (the first ones); None = all heads
    "num_alibi_heads": Field(None, "int?"),
}

POOLING_MODES = ("mean", "cls", "lin_softmax")
FEAT_EXTRACT_NORMS = ("layer", "group")
ALIBI_DISTANCES = ("manhattan", "euclidean")


class Data2Vec2ConfigBase(Data2VecConfigBase):
    """What the three data2vec 2.0 configs share (see the module docstring)."""

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for key in ("num_prenet_layers", "num_extra_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"{name}.{key} must be >= 0, got {getattr(self, key)}")
        heads = self.num_alibi_heads
        if heads is not None and not 0 < heads <= self.num_attention_heads:
            raise ValueError(
                f"{name}.num_alibi_heads must be in [1, num_attention_heads={self.num_attention_heads}], got {heads}"
            )
        self._check_probability("hidden_dropout", "attention_dropout", "activation_dropout", "post_mlp_dropout")

    # Whether the base model's output keeps the extra tokens (the image CLS token, first) or
    # drops them as fairseq's extract_features does for audio and text.
    keeps_extra_tokens = False

    @property
    def alibi_heads(self) -> int:
        return self.num_attention_heads if self.num_alibi_heads is None else self.num_alibi_heads

    @property
    def alibi_scale_shape(self) -> tuple[int, ...]:
        """Shape of the stored ``alibi_scale`` tensor: (layers or 1, 1, heads or 1, 1, 1)."""
        layers = self.num_prenet_layers + self.num_hidden_layers if self.alibi_scale_per_layer else 1
        heads = self.alibi_heads if self.alibi_scale_per_head else 1
        return (layers, 1, heads, 1, 1)


class Data2Vec2VisionConfig(Data2Vec2ConfigBase):
    """data2vec 2.0 image encoder (fairseq ``ImageEncoder``) and its classification head.

    Args:
        image_size: square input size (fairseq ``input_size``; positions assume a square grid).
        patch_size: patch side (a stride-``patch_size`` convolution).
        patch_embed_dim: width of the patch convolution (a Linear maps it to ``hidden_size``
            when it differs); None = ``hidden_size``.
        use_fixed_positions: add the stored (1, patches, hidden) position table.
        alibi_dims: ALiBi over the patch sequence (1) or the patch grid (2).
        alibi_distance: ``manhattan`` or ``euclidean`` grid distance for 2-D ALiBi.
        pooling_mode: head input: ``mean`` over patches, the first token (``cls``: the CLS token,
            or the first patch without extra tokens, as upstream), or ``lin_softmax``.
        use_fc_norm: LayerNorm (eps ``fc_norm_eps``) on the pooled vector.

    Examples:
        >>> Data2Vec2VisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        ...                       intermediate_size=128, image_size=32, patch_size=8).num_patches
        16
    """

    model_type = "data2vec2-vision"
    keeps_extra_tokens = True
    FIELDS = {
        **_COMMON,
        "layer_norm_eps": Field(1e-6, "float"),
        "num_extra_tokens": Field(1, "int"),
        "image_size": Field(224, "int"),
        "patch_size": Field(16, "int"),
        "num_channels": Field(3, "int"),
        "patch_embed_dim": Field(None, "int?"),
        "use_fixed_positions": Field(True, "bool"),
        "alibi_dims": Field(2, "int"),
        "alibi_distance": Field("manhattan", "str"),
        "pooling_mode": Field("mean", "str"),
        "use_fc_norm": Field(True, "bool"),
        "fc_norm_eps": Field(1e-6, "float"),
    }

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for key in ("image_size", "patch_size", "num_channels"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        if self.image_size < self.patch_size:
            raise ValueError(f"{name}.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if self.patch_embed_dim is not None and self.patch_embed_dim <= 0:
            raise ValueError(f"{name}.patch_embed_dim must be positive, got {self.patch_embed_dim}")
        if self.pooling_mode not in POOLING_MODES:
            raise ValueError(f"{name}.pooling_mode must be one of {POOLING_MODES}, got {self.pooling_mode!r}")
        if self.alibi_dims not in (1, 2):
            raise ValueError(f"{name}.alibi_dims must be 1 or 2, got {self.alibi_dims}")
        if self.alibi_distance not in ALIBI_DISTANCES:
            raise ValueError(f"{name}.alibi_distance must be one of {ALIBI_DISTANCES}, got {self.alibi_distance!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


class Data2Vec2AudioConfig(Data2Vec2ConfigBase):
    """data2vec 2.0 speech encoder (fairseq ``AudioEncoder``), CTC and classification heads.

    Args:
        conv_dim / conv_kernel / conv_stride: the waveform conv stack (fairseq
            ``feature_encoder_spec`` as three lists).
        feat_extract_norm: ``layer`` (LayerNorm after every conv) or ``group`` (GroupNorm after
            the first conv only), fairseq ``extractor_mode`` ``layer_norm`` / ``default``.
        num_conv_pos_embeddings / conv_pos_kernel_size / num_conv_pos_embedding_groups: the
            relative positional conv stack (fairseq ``conv_pos_depth``, ``max(3, conv_pos_width
            // conv_pos_depth)``, ``conv_pos_groups``).
        conv_pos_pre_layer_norm: an affine LayerNorm on the input of the positional convs.
        vocab_size / pad_token_id: CTC output size and blank index (fairseq blank = 0).
        blank_weight / blank_mode: fairseq's decoding bias on the blank logit (index 0), added
            (``add``) or set (``set``) when ``blank_weight`` is non-zero; part of the logits.

    Examples:
        >>> Data2Vec2AudioConfig(conv_dim=[32, 32], conv_kernel=[10, 3], conv_stride=[5, 2]).inputs_to_logits_ratio
        10
    """

    model_type = "data2vec2-audio"
    FIELDS = {
        **_COMMON,
        "conv_dim": Field([512] * 7, "ints"),
        "conv_kernel": Field([10, 3, 3, 3, 3, 2, 2], "ints"),
        "conv_stride": Field([5, 2, 2, 2, 2, 2, 2], "ints"),
        "conv_bias": Field(False, "bool"),
        "feat_extract_norm": Field("layer", "str"),
        "feat_extract_activation": Field("gelu", "str"),
        "num_conv_pos_embeddings": Field(5, "int"),
        "conv_pos_kernel_size": Field(19, "int"),
        "num_conv_pos_embedding_groups": Field(16, "int"),
        "conv_pos_pre_layer_norm": Field(False, "bool"),
        "vocab_size": Field(32, "int"),
        "pad_token_id": Field(0, "int?"),
        "final_dropout": Field(0.0, "float"),
        # fairseq Wav2VecCtc: added to ("add") or replacing ("set") the blank logit (index 0)
        "blank_weight": Field(0.0, "float"),
        "blank_mode": Field("add", "str"),
        "ctc_loss_reduction": Field("sum", "str"),
        "ctc_zero_infinity": Field(False, "bool"),
        "classifier_proj_size": Field(256, "int"),
    }
    # The 1.0 feature-encoder layers this family reuses read these.
    add_adapter = False

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        lengths = {len(self.conv_dim), len(self.conv_kernel), len(self.conv_stride)}
        if len(lengths) != 1 or not self.conv_dim:
            raise ValueError(f"{name}: conv_dim, conv_kernel and conv_stride must be non-empty and of one length")
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            if any(v <= 0 for v in getattr(self, key)):
                raise ValueError(f"{name}.{key} values must be positive, got {getattr(self, key)}")
        for key in ("conv_pos_kernel_size", "num_conv_pos_embedding_groups", "vocab_size", "classifier_proj_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{name}.{key} must be positive, got {getattr(self, key)}")
        if self.num_conv_pos_embeddings < 0:
            raise ValueError(f"{name}.num_conv_pos_embeddings must be >= 0, got {self.num_conv_pos_embeddings}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})"
            )
        if self.feat_extract_norm not in FEAT_EXTRACT_NORMS:
            raise ValueError(
                f"{name}.feat_extract_norm must be one of {FEAT_EXTRACT_NORMS}, got {self.feat_extract_norm!r}"
            )
        if self.feat_extract_activation not in ACTIVATIONS:
            raise ValueError(f"{name}.feat_extract_activation: unknown activation {self.feat_extract_activation!r}")
        if self.blank_mode not in ("add", "set"):
            raise ValueError(f"{name}.blank_mode must be 'add' or 'set', got {self.blank_mode!r}")
        if self.ctc_loss_reduction not in ("sum", "mean"):
            raise ValueError(f"{name}.ctc_loss_reduction must be 'sum' or 'mean', got {self.ctc_loss_reduction!r}")
        self._check_probability("final_dropout")

    @property
    def inputs_to_logits_ratio(self) -> int:
        return int(np.prod(self.conv_stride))


class Data2Vec2TextConfig(Data2Vec2ConfigBase):
    """data2vec 2.0 text encoder (fairseq ``TextEncoder``) and the RoBERTa-style sentence head.

    Args:
        max_position_embeddings: fairseq ``max_source_positions``; learned tables hold
            ``max_position_embeddings + pad_token_id + 1`` rows.
        use_position_embeddings / use_learned_position_embeddings: positions at all, and
            learned (else fairseq's sinusoidal table, computed, not stored).
        scale_embedding: multiply token embeddings by sqrt(hidden_size).
        use_embedding_layer_norm: LayerNorm (eps 1e-5) after the embeddings.
        classifier_activation / classifier_hidden_size: the sentence head's dense layer.

    Examples:
        >>> Data2Vec2TextConfig(vocab_size=25, max_position_embeddings=64).position_table_rows
        66
    """

    model_type = "data2vec2-text"
    FIELDS = {
        **_COMMON,
        "vocab_size": Field(50265, "int"),
        "max_position_embeddings": Field(512, "int"),
        "pad_token_id": Field(1, "int"),
        "bos_token_id": Field(0, "int?"),
        "eos_token_id": Field(2, "any"),
        "use_position_embeddings": Field(True, "bool"),
        "use_learned_position_embeddings": Field(True, "bool"),
        "scale_embedding": Field(False, "bool"),
        "use_embedding_layer_norm": Field(True, "bool"),
        "classifier_activation": Field("tanh", "str"),
        "classifier_hidden_size": Field(None, "int?"),
        "classifier_dropout": Field(0.0, "float"),
    }

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.vocab_size <= 0 or self.max_position_embeddings <= 0:
            raise ValueError(f"{name}: vocab_size and max_position_embeddings must be positive")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"{name}.pad_token_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}"
            )
        if self.classifier_activation not in ACTIVATIONS:
            raise ValueError(f"{name}.classifier_activation: unknown activation {self.classifier_activation!r}")
        if self.classifier_hidden_size is not None and self.classifier_hidden_size <= 0:
            raise ValueError(f"{name}.classifier_hidden_size must be positive, got {self.classifier_hidden_size}")
        self._check_probability("classifier_dropout")

    @property
    def position_table_rows(self) -> int:
        return self.max_position_embeddings + self.pad_token_id + 1

    @property
    def classifier_width(self) -> int:
        return self.hidden_size if self.classifier_hidden_size is None else self.classifier_hidden_size


for _cls in (Data2Vec2VisionConfig, Data2Vec2AudioConfig, Data2Vec2TextConfig):
    CONFIG_CLASSES[_cls.model_type] = _cls


# ------------------------------------------------------------------------------ formulas


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes (geometric from 2^(-8/n); non-powers of two interleave the next power)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(closest) + alibi_slopes(2 * closest).tolist()[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def alibi_distances_2d(num_patches: int, distance: str = "manhattan") -> np.ndarray:
    """(N, N) negative grid distances between the patches of a square grid, row-major."""
    side = int(round(math.sqrt(num_patches)))
    if side * side != num_patches:
        raise ValueError(f"2-D ALiBi needs a square patch grid, got {num_patches} patches")
    rows, cols = np.divmod(np.arange(num_patches), side)
    dr = rows[:, None] - rows[None, :]
    dc = cols[:, None] - cols[None, :]
    if distance == "manhattan":
        d = np.abs(dr) + np.abs(dc)
    elif distance == "euclidean":
        d = np.sqrt(dr.astype(np.float64) ** 2 + dc.astype(np.float64) ** 2)
    else:
        raise ValueError(f"alibi distance must be one of {ALIBI_DISTANCES}, got {distance!r}")
    return (-d).astype(np.float32)


def alibi_distances_1d(length: int) -> np.ndarray:
    """(T, T) negative distances -|i - j| along a sequence."""
    pos = np.arange(length)
    return (-np.abs(pos[None, :] - pos[:, None])).astype(np.float32)


def image_alibi_bias(config: Data2Vec2VisionConfig) -> np.ndarray:
    """(H_alibi, N, N) unscaled ALiBi bias over the patches: 1-D along the row-major sequence
    or 2-D over the grid, slopes times distances in float32 as upstream computes it."""
    if config.alibi_dims == 1:
        dist = alibi_distances_1d(config.num_patches)
    else:
        dist = alibi_distances_2d(config.num_patches, config.alibi_distance)
    return alibi_slopes(config.alibi_heads)[:, None, None] * dist[None]


def sincos_2d_positions(dim: int, grid: int) -> np.ndarray:
    """(grid*grid, dim) MAE 2-D sin-cos table (what a fresh upstream image model stores).

    Half the channels encode the row index, half the column index, each as [sin | cos] of
    position * 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need hidden_size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def encode(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # upstream meshgrid(w, h) puts the column index first
    return np.concatenate([encode(xs), encode(ys)], axis=1).astype(np.float32)


def sinusoidal_positions(num_rows: int, dim: int, padding_idx: int) -> np.ndarray:
    """(num_rows, dim) fairseq sinusoidal table: [sin | cos] halves, row ``padding_idx`` zero."""
    half = dim // 2
    step = math.log(10000) / (half - 1) if half > 1 else 0.0
    freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-step))
    angles = np.arange(num_rows, dtype=np.float32)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        table = np.concatenate([table, np.zeros((num_rows, 1), np.float32)], axis=1)
    table[padding_idx] = 0.0
    return table.astype(np.float32)


def frame_lengths(config: Data2Vec2AudioConfig, samples):
    """Frames out of the conv stack for ``samples`` valid samples: floor((n - k) / s + 1) per layer."""
    lengths = samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = (lengths - kernel) // stride + 1
    return lengths


def min_input_samples(config: Data2Vec2AudioConfig) -> int:
    n = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        n = (n - 1) * stride + kernel
    return n


def check_input_values(config: Data2Vec2AudioConfig, shape: tuple, dtype: str) -> None:
    check_main_input("input_values", shape, dtype, ("batch", "samples"))
    need = min_input_samples(config)
    if shape[1] is not None and shape[1] < need:  # None: a symbolic length inside a traced graph
        raise ValueError(f"input_values has {shape[1]} samples; the conv stack needs at least {need}")


def _same_dims(a: tuple, b: tuple) -> bool:
    """Shapes equal where both are known (None: a symbolic dimension)."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def check_attention_mask(mask_shape: tuple, input_shape: tuple) -> None:
    if not _same_dims(tuple(mask_shape), tuple(input_shape[:2])):
        raise ValueError(
            f"attention_mask must have the shape of the inputs {tuple(input_shape[:2])}, got {tuple(mask_shape)}"
        )


def check_pixel_values(config: Data2Vec2VisionConfig, shape: tuple, dtype=None) -> None:
    check_main_input("pixel_values", shape, dtype, PIXEL_AXES)
    expected = (config.num_channels, config.image_size, config.image_size)
    if not _same_dims(tuple(shape), (None, *expected)):
        raise ValueError(
            f"pixel_values must have shape (batch, {', '.join(map(str, expected))}) (NCHW; data2vec 2.0 "
            f"positions are fixed to image_size={config.image_size}), got {tuple(shape)}"
        )


def check_input_ids(config: Data2Vec2TextConfig, ids: np.ndarray) -> None:
    check_main_input("input_ids", ids.shape, ids.dtype, ("batch", "sequence_length"), integer=True)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise ValueError(f"input_ids must be in [0, vocab_size={config.vocab_size}), got [{ids.min()}, {ids.max()}]")
    if config.use_position_embeddings and ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"input_ids has {ids.shape[1]} tokens; max_position_embeddings is {config.max_position_embeddings}"
        )

