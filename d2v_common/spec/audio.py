"""Weight spec of the wav2vec2-shaped audio family."""

from __future__ import annotations

import math

from d2v_common.configs import Data2VecAudioConfig
from d2v_common.models.checks import weighted_layer_sum_size
from d2v_common.spec.core import ZEROS, SpecBuilder, WeightSpec, fill, normal, uniform

BASE_PREFIX = "data2vec_audio"
ARCHITECTURES = (
    "Data2VecAudioModel",
    "Data2VecAudioForAudioFrameClassification",
    "Data2VecAudioForCTC",
    "Data2VecAudioForSequenceClassification",
    "Data2VecAudioForXVector",
)
H5_MODULE_RULES = ()
H5_EMPTY_GROUPS = {}

# Heads that read the encoder's hidden states directly cannot follow the adapter's
# down-sampled sequence; HF refuses the combination and so do we.
_NO_ADAPTER = {
    "Data2VecAudioForAudioFrameClassification": "Audio frame classification",
    "Data2VecAudioForSequenceClassification": "Sequence classification",
    "Data2VecAudioForXVector": "XVector",
}


def _backbone(b: SpecBuilder, config: Data2VecAudioConfig) -> None:
    hidden = config.hidden_size
    if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
        b.param("masked_spec_embed", (hidden,), uniform(0.0, 1.0))
    in_ch = 1
    for i, (dim, kernel) in enumerate(zip(config.conv_dim, config.conv_kernel)):
        layer = b.scope(f"feature_extractor.conv_layers.{i}")
        layer.conv1d("conv", in_ch, dim, kernel, bias=config.conv_bias)
        layer.layer_norm("layer_norm", dim)
        in_ch = dim
    proj = b.scope("feature_projection")
    proj.layer_norm("layer_norm", config.conv_dim[-1])
    bound = math.sqrt(1.0 / config.conv_dim[-1])
    proj.linear("projection", config.conv_dim[-1], hidden, init=uniform(-bound, bound),
                bias_init=uniform(-bound, bound))
    enc = b.scope("encoder")
    for i in range(config.num_conv_pos_embeddings):
        enc.scope(f"pos_conv_embed.layers.{i}").conv1d(
            "conv", hidden, hidden, config.conv_pos_kernel_size, groups=config.num_conv_pos_embedding_groups,
            bias_init=ZEROS,
        )
    enc.layer_norm("layer_norm", hidden)
    for i in range(config.num_hidden_layers):
        layer = enc.scope(f"layers.{i}")
        attn = layer.scope("attention")
        for proj_name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            attn.linear(proj_name, hidden, hidden)
        layer.layer_norm("layer_norm", hidden)
        ff = layer.scope("feed_forward")
        ff.linear("intermediate_dense", hidden, config.intermediate_size)
        ff.linear("output_dense", config.intermediate_size, hidden)
        layer.layer_norm("final_layer_norm", hidden)
    if config.add_adapter:
        adapter = b.scope("adapter")
        out = config.output_hidden_size
        if out != hidden:
            adapter.linear("proj", hidden, out)
            adapter.layer_norm("proj_layer_norm", out)
        for i in range(config.num_adapter_layers):
            adapter.scope(f"layers.{i}").conv1d("conv", out, 2 * out, config.adapter_kernel_size)


def audio_spec(config: Data2VecAudioConfig, architecture: str) -> WeightSpec:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown audio architecture {architecture!r}; expected one of {ARCHITECTURES}")
    if architecture in _NO_ADAPTER and config.add_adapter:
        raise ValueError(
            f"{_NO_ADAPTER[architecture]} does not support the adapter: set Data2VecAudioConfig.add_adapter=False"
        )
    root = SpecBuilder(config.initializer_range)
    if architecture == "Data2VecAudioModel":
        _backbone(root, config)
        return WeightSpec(architecture, "audio", BASE_PREFIX, root.out)

    hidden = config.hidden_size
    num_layers = config.num_hidden_layers + 1  # the embeddings count as a layer for the weighted sum
    if weighted_layer_sum_size(config, architecture):
        root.param("layer_weights", (num_layers,), fill(1.0 / num_layers))
    _backbone(root.scope(BASE_PREFIX), config)
    if architecture == "Data2VecAudioForCTC":
        width = config.output_hidden_size if config.add_adapter else hidden
        root.linear("lm_head", width, config.vocab_size)
    elif architecture == "Data2VecAudioForSequenceClassification":
        root.linear("projector", hidden, config.classifier_proj_size)
        root.linear("classifier", config.classifier_proj_size, config.num_labels)
    elif architecture == "Data2VecAudioForAudioFrameClassification":
        root.linear("classifier", hidden, config.num_labels)
    else:
        tdnn = config.tdnn_dim
        root.linear("projector", hidden, tdnn[0])
        for i, (dim, kernel) in enumerate(zip(tdnn, config.tdnn_kernel)):
            in_dim = tdnn[i - 1] if i > 0 else tdnn[0]
            # HF keeps the TDNN kernel as a Linear weight of shape (out, kernel * in).
            root.linear(f"tdnn.{i}.kernel", in_dim * kernel, dim)
        root.linear("feature_extractor", tdnn[-1] * 2, config.xvector_output_dim)
        root.linear("classifier", config.xvector_output_dim, config.xvector_output_dim)
        root.scope("objective").param("weight", (config.xvector_output_dim, config.num_labels), normal(1.0))
    return WeightSpec(architecture, "audio", BASE_PREFIX, root.out)
