"""Weight spec of the RoBERTa-shaped text family."""

from __future__ import annotations

from d2v_common.configs import Data2VecTextConfig
from d2v_common.models.checks import weighted_layer_sum_size
from d2v_common.spec.core import SpecBuilder, WeightSpec, fill

BASE_PREFIX = "data2vec_text"
ARCHITECTURES = (
    "Data2VecTextModel",
    "Data2VecTextForCausalLM",
    "Data2VecTextForMaskedLM",
    "Data2VecTextForSequenceClassification",
    "Data2VecTextForMultipleChoice",
    "Data2VecTextForTokenClassification",
    "Data2VecTextForQuestionAnswering",
)
H5_MODULE_RULES = ()
H5_EMPTY_GROUPS = {}

# Heads built on the pooled output keep the pooler; the others drop it.
_WITH_POOLER = {"Data2VecTextModel", "Data2VecTextForMultipleChoice"}


def _attention(b: SpecBuilder, config: Data2VecTextConfig, relative: bool) -> None:
    hidden = config.hidden_size
    head_dim = hidden // config.num_attention_heads
    s = b.scope("self")
    s.linear("query", hidden, hidden)
    s.linear("key", hidden, hidden)
    s.linear("value", hidden, hidden)
    if relative:
        s.embedding("distance_embedding", 2 * config.max_position_embeddings - 1, head_dim)
    out = b.scope("output")
    out.linear("dense", hidden, hidden)
    out.layer_norm("LayerNorm", hidden)


def _backbone(b: SpecBuilder, config: Data2VecTextConfig, add_pooling_layer: bool) -> None:
    hidden = config.hidden_size
    emb = b.scope("embeddings")
    emb.embedding("word_embeddings", config.vocab_size, hidden)
    emb.embedding("position_embeddings", config.max_position_embeddings, hidden)
    emb.embedding("token_type_embeddings", config.type_vocab_size, hidden)
    emb.layer_norm("LayerNorm", hidden)
    relative = config.position_embedding_type in ("relative_key", "relative_key_query")
    for i in range(config.num_hidden_layers):
        layer = b.scope(f"encoder.layer.{i}")
        _attention(layer.scope("attention"), config, relative)
        if config.add_cross_attention:
            # Cross-attention always uses absolute positions (no distance embedding).
            _attention(layer.scope("crossattention"), config, relative=False)
        layer.scope("intermediate").linear("dense", hidden, config.intermediate_size)
        out = layer.scope("output")
        out.linear("dense", config.intermediate_size, hidden)
        out.layer_norm("LayerNorm", hidden)
    if add_pooling_layer:
        b.scope("pooler").linear("dense", hidden, hidden)


def check_text_architecture(config: Data2VecTextConfig, architecture: str) -> None:
    """Config combinations the text classes refuse (as HF does)."""
    if config.add_cross_attention and not config.is_decoder:
        raise ValueError("Data2VecTextConfig.add_cross_attention=True requires is_decoder=True")
    if architecture == "Data2VecTextForMaskedLM" and config.is_decoder:
        raise ValueError("Data2VecTextForMaskedLM needs a bidirectional encoder: set is_decoder=False")


def text_spec(config: Data2VecTextConfig, architecture: str, add_pooling_layer: bool = True) -> WeightSpec:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown text architecture {architecture!r}; expected one of {ARCHITECTURES}")
    check_text_architecture(config, architecture)
    root = SpecBuilder(config.initializer_range)
    hidden = config.hidden_size
    if architecture == "Data2VecTextModel":
        _backbone(root, config, add_pooling_layer=add_pooling_layer)
        return WeightSpec(architecture, "text", BASE_PREFIX, root.out)

    _backbone(root.scope(BASE_PREFIX), config, add_pooling_layer=architecture in _WITH_POOLER)
    if architecture in ("Data2VecTextForCausalLM", "Data2VecTextForMaskedLM"):
        head = root.scope("lm_head")
        head.param("bias", (config.vocab_size,))
        head.linear("dense", hidden, hidden)
        head.layer_norm("layer_norm", hidden)
        tied = f"{BASE_PREFIX}.embeddings.word_embeddings.weight" if config.tie_word_embeddings else None
        head.linear("decoder", hidden, config.vocab_size, tied_weight=tied, tied_bias="lm_head.bias")
    elif architecture == "Data2VecTextForSequenceClassification":
        head = root.scope("classifier")
        head.linear("dense", hidden, hidden)
        head.linear("out_proj", hidden, config.num_labels)
        size = weighted_layer_sum_size(config, architecture)
        if size:  # the weighted layer sum's weights, uniform
            root.param("layer_weights", (size,), fill(1.0 / size))
    elif architecture == "Data2VecTextForMultipleChoice":
        root.linear("classifier", hidden, 1)
    elif architecture == "Data2VecTextForTokenClassification":
        root.linear("classifier", hidden, config.num_labels)
    else:
        root.linear("qa_outputs", hidden, config.num_labels)
    return WeightSpec(architecture, "text", BASE_PREFIX, root.out)
