"""FLOPs of one Data2Vec forward call, counted from the config (2 per multiply-add).

``python -m crosscheck.bench`` reports each row's model FLOPs per second as a fraction of the
machine's GEMM peak. Counting them with ``torch.utils.flop_counter`` misses every kernel the
counter has no formula for (d2v's float32 ``Linear`` runs on ``torch.ops.mkldnn._linear_pointwise``,
which it does not see), so the count comes from the config instead: every matrix product and
convolution (projections, attention products, FFN, feature encoder, patch embedding, heads), as
the models compute them. Normalisation, activations, softmax, pooling and resizing are not
counted (as in ``torch.utils.flop_counter``), nor are biases.

Examples:
    >>> from d2v_common.configs import Data2VecTextConfig
    >>> model_flops(Data2VecTextConfig(), "Data2VecTextModel", batch=8, length=128) / 1e9  # doctest: +SKIP
"""

from __future__ import annotations

from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    """A ``Linear(fan_in, fan_out)`` applied to ``rows`` vectors."""
    return 2 * rows * fan_in * fan_out


def conv(batch: int, out_positions: int, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> int:
    """A convolution producing ``out_positions`` positions (``kernel_size``: product of its sides)."""
    return 2 * batch * out_positions * out_channels * (in_channels // groups) * kernel_size


def encoder(batch: int, tokens: int, hidden: int, intermediate: int, layers: int) -> int:
    """Transformer layers: Q, K, V and output projections, the two attention products, the FFN."""
    rows = batch * tokens
    projections = 4 * linear(rows, hidden, hidden)
    attention = 2 * 2 * batch * tokens * tokens * hidden  # scores Q K^T and scores V, all heads
    ffn = linear(rows, hidden, intermediate) + linear(rows, intermediate, hidden)
    return layers * (projections + attention + ffn)


# --------------------------------------------------------------------------------- families
def _text(config: Data2VecTextConfig, architecture: str, batch: int, length: int) -> int:
    h = config.hidden_size
    flops = encoder(batch, length, h, config.intermediate_size, config.num_hidden_layers)  # embeddings: lookups
    if architecture == "Data2VecTextModel":
        return flops + linear(batch, h, h)  # pooler on the first token
    if architecture == "Data2VecTextForSequenceClassification":
        return flops + linear(batch, h, h) + linear(batch, h, config.num_labels)  # dense + out_proj, first token
    raise ValueError(f"no FLOP formula for {architecture}")


def audio_frames(config: Data2VecAudioConfig, samples: int) -> list[int]:
    """Frame count after each feature-encoder conv (the first entry is ``samples``)."""
    frames = [samples]
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        frames.append((frames[-1] - kernel) // stride + 1)
    return frames


def audio_front_end(config, batch: int, length: int) -> tuple[int, int]:
    """(FLOPs, frames) of the conv feature encoder, the feature projection and the positional
    convs, the same in data2vec 1.0 and 2.0."""
    h = config.hidden_size
    frames = audio_frames(config, length)
    channels = [1, *config.conv_dim]
    flops = sum(conv(batch, frames[i + 1], channels[i], channels[i + 1], config.conv_kernel[i])
                for i in range(len(config.conv_dim)))
    t = frames[-1]
    flops += linear(batch * t, config.conv_dim[-1], h)  # feature projection
    k = config.conv_pos_kernel_size
    conv_positions = t + 2 * (k // 2) - k + 1  # "same" padding; an even kernel's extra frame is trimmed after
    flops += config.num_conv_pos_embeddings * conv(batch, conv_positions, h, h, k, config.num_conv_pos_embedding_groups)
    return flops, t


def _audio(config: Data2VecAudioConfig, architecture: str, batch: int, length: int) -> int:
    if architecture != "Data2VecAudioModel" or config.add_adapter:
        raise ValueError(f"no FLOP formula for {architecture}" + (" with an adapter" if config.add_adapter else ""))
    flops, t = audio_front_end(config, batch, length)
    return flops + encoder(batch, t, config.hidden_size, config.intermediate_size, config.num_hidden_layers)


def _vision(config: Data2VecVisionConfig, architecture: str, batch: int, length: int) -> int:
    h, p = config.hidden_size, config.patch_size
    grid = length // p
    flops = conv(batch, grid * grid, config.num_channels, h, p * p)  # patch embedding
    tokens = grid * grid + 1  # + CLS
    if architecture == "Data2VecVisionModel":
        return flops + encoder(batch, tokens, h, config.intermediate_size, config.num_hidden_layers)
    if architecture == "Data2VecVisionForImageClassification":
        flops += encoder(batch, tokens, h, config.intermediate_size, config.num_hidden_layers)
        return flops + linear(batch, h, config.num_labels)
    if architecture != "Data2VecVisionForSemanticSegmentation":
        raise ValueError(f"no FLOP formula for {architecture}")
    features = config.segmentation_feature_indices()
    if len(features) != 4:
        raise ValueError(f"no FLOP formula for {architecture} with {len(features)} feature maps")
    flops += encoder(batch, tokens, h, config.intermediate_size, config.num_hidden_layers)
    b, g = batch, grid
    # FPN: two 2x2 stride-2 transposed convs (grid -> 4 grid), one (-> 2 grid), identity, max pool
    flops += conv(b, g * g, h, h, 4) + conv(b, (2 * g) ** 2, h, h, 4) + conv(b, g * g, h, h, 4)
    sides = [4 * g, 2 * g, g, g // 2]
    # UperNet: lateral 1x1 convs on the first three maps, pyramid pooling + 3x3 bottleneck on the
    # last, 3x3 FPN convs on the first three, 3x3 fusion of the four, 1x1 classifier
    flops += sum(conv(b, s * s, h, h, 1) for s in sides[:3])
    flops += sum(conv(b, s * s, h, h, 1) for s in config.pool_scales)
    flops += conv(b, sides[3] ** 2, h * (1 + len(config.pool_scales)), h, 9)
    flops += sum(conv(b, s * s, h, h, 9) for s in sides[:3])
    flops += conv(b, sides[0] ** 2, 4 * h, h, 9) + conv(b, sides[0] ** 2, h, config.num_labels, 1)
    if config.use_auxiliary_head:  # FCN on the third map
        c, positions = config.auxiliary_channels, sides[2] ** 2
        flops += sum(conv(b, positions, h if i == 0 else c, c, 9) for i in range(config.auxiliary_num_convs))
        if config.auxiliary_concat_input:
            flops += conv(b, positions, h + c, c, 9)
        flops += conv(b, positions, c, config.num_labels, 1)
    return flops


# ------------------------------------------------------------------------------ data2vec 2.0
def _data2vec2_encoder(config, batch: int, tokens: int) -> int:
    """The extra tokens join the sequence; prenet and main blocks are alike."""
    layers = config.num_prenet_layers + config.num_hidden_layers
    return encoder(batch, config.num_extra_tokens + tokens, config.hidden_size, config.intermediate_size, layers)


def _text2(config: Data2Vec2TextConfig, architecture: str, batch: int, length: int) -> int:
    flops = _data2vec2_encoder(config, batch, length)  # embeddings: lookups
    if architecture == "Data2Vec2TextModel":
        return flops
    if architecture == "Data2Vec2TextForSequenceClassification":  # dense + out_proj on the first token
        return flops + linear(batch, config.hidden_size, config.classifier_width) + linear(
            batch, config.classifier_width, config.num_labels)
    raise ValueError(f"no FLOP formula for {architecture}")


def _audio2(config: Data2Vec2AudioConfig, architecture: str, batch: int, length: int) -> int:
    flops, t = audio_front_end(config, batch, length)
    flops += _data2vec2_encoder(config, batch, t)
    h = config.hidden_size
    if architecture == "Data2Vec2AudioModel":
        return flops
    if architecture == "Data2Vec2AudioForCTC":
        return flops + linear(batch * t, h, config.vocab_size)
    if architecture == "Data2Vec2AudioForSequenceClassification":  # projector per frame, classifier on the mean
        return flops + linear(batch * t, h, config.classifier_proj_size) + linear(
            batch, config.classifier_proj_size, config.num_labels)
    raise ValueError(f"no FLOP formula for {architecture}")


def _vision2(config: Data2Vec2VisionConfig, architecture: str, batch: int, length: int) -> int:
    h, p = config.hidden_size, config.patch_size
    grid = length // p
    width = config.patch_embed_dim or h
    flops = conv(batch, grid * grid, config.num_channels, width, p * p)  # patch embedding
    if width != h:
        flops += linear(batch * grid * grid, width, h)
    flops += _data2vec2_encoder(config, batch, grid * grid)
    if architecture == "Data2Vec2VisionModel":
        return flops
    if architecture == "Data2Vec2VisionForImageClassification":
        return flops + linear(batch, h, config.num_labels)
    raise ValueError(f"no FLOP formula for {architecture}")


_FAMILIES = {Data2VecTextConfig: _text, Data2VecAudioConfig: _audio, Data2VecVisionConfig: _vision,
             Data2Vec2TextConfig: _text2, Data2Vec2AudioConfig: _audio2, Data2Vec2VisionConfig: _vision2}


def model_flops(config, architecture: str, batch: int, length: int) -> int:
    """FLOPs of one forward call of ``architecture`` on a batch of ``batch`` inputs.

    Args:
        config: a data2vec 1.0 or 2.0 config (text, audio or vision).
        architecture: the class name (the base models, text sequence classification, vision
            image classification and semantic segmentation: the benchmark's workloads).
        batch: inputs per call.
        length: tokens (text), samples (audio) or the image side in pixels (vision).

    Raises:
        ValueError: for a class or config variant without a formula here.
    """
    count = _FAMILIES.get(type(config))
    if count is None:
        raise ValueError(f"no FLOP formula for {type(config).__name__}")
    return count(config, architecture, batch, length)
