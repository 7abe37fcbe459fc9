"""data2vec 2.0 cases: small configs covering the options the fairseq checkpoints use."""

from __future__ import annotations

import numpy as np

from crosscheck.cases.audio import CTC_SUM_LOSS_TOLERANCE
from crosscheck.cases.base import Case
from d2v_common.data2vec2 import Data2Vec2AudioConfig, Data2Vec2TextConfig, Data2Vec2VisionConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
VISION = dict(**TINY, image_size=32, patch_size=8, num_prenet_layers=1, num_labels=3)
AUDIO = dict(
    **TINY, conv_dim=[32, 32, 32], conv_kernel=[10, 3, 3], conv_stride=[5, 2, 2], num_conv_pos_embeddings=2,
    conv_pos_kernel_size=4, num_conv_pos_embedding_groups=4, vocab_size=10, classifier_proj_size=16, num_labels=3,
)
TEXT = dict(**TINY, vocab_size=40, max_position_embeddings=24, num_labels=3)

VISION_VARIANTS = {
    "plain": {},
    "alibi2d": dict(use_alibi=True, alibi_scale_per_head=True, alibi_scale_per_layer=True, learned_alibi_scale=True,
                    pooling_mode="cls", num_alibi_heads=2),
    "alibi1d-linsoftmax": dict(use_alibi=True, alibi_dims=1, pooling_mode="lin_softmax", patch_embed_dim=24,
                               num_extra_tokens=2, use_fc_norm=False),
    "prenorm": dict(layer_norm_first=True, use_fixed_positions=False, alibi_distance="euclidean",
                    use_alibi=True, layer_norm_affine=False),
}
AUDIO_VARIANTS = {
    "alibi": dict(use_alibi=True, alibi_scale_per_head=True, learned_alibi_scale=True, ctc_loss_reduction="mean"),
    "groupnorm": dict(feat_extract_norm="group", conv_pos_pre_layer_norm=True, num_prenet_layers=1,
                      num_extra_tokens=1, use_alibi=True, alibi_scale_per_layer=True, num_alibi_heads=3),
}
TEXT_VARIANTS = {
    "learned": {},
    "sinusoidal": dict(use_learned_position_embeddings=False, scale_embedding=True, num_prenet_layers=1,
                       use_alibi=True, classifier_hidden_size=20, classifier_activation="gelu"),
}


def _vision_inputs(config, head):
    def make(rng):
        out = {"pixel_values": rng.standard_normal((2, 3, config.image_size, config.image_size)).astype(np.float32)}
        if head == "cls":
            out["labels"] = rng.integers(0, config.num_labels, size=(2,)).astype(np.int64)
        return out

    return make


def _audio_inputs(config, head):
    def make(rng):
        mask = np.ones((2, 1600), np.int64)
        mask[1, 1200:] = 0
        out = {"input_values": rng.standard_normal((2, 1600)).astype(np.float32), "attention_mask": mask}
        if head == "ctc":
            out["labels"] = rng.integers(1, config.vocab_size, size=(2, 6)).astype(np.int64)
        elif head == "seq":
            out["labels"] = rng.integers(0, config.num_labels, size=(2,)).astype(np.int64)
        return out

    return make


def _text_inputs(config, head):
    def make(rng):
        ids = rng.integers(4, config.vocab_size, size=(2, 12)).astype(np.int64)
        ids[:, 0] = 0
        ids[1, 8:] = config.pad_token_id
        out = {"input_ids": ids, "attention_mask": (ids != config.pad_token_id).astype(np.int64)}
        if head == "cls":
            out["labels"] = rng.integers(0, config.num_labels, size=(2,)).astype(np.int64)
        return out

    return make


def cases(size: str = "small") -> list[Case]:
    if size != "small":
        return []  # no base-size data2vec 2.0 cases (the small ones cover every option)
    out = []
    kwargs = dict(call_kwargs=dict(output_hidden_states=True, output_attentions=True), hf_torch=False)
    for variant, extra in VISION_VARIANTS.items():
        config = Data2Vec2VisionConfig(**{**VISION, **extra})
        for head, arch in (("model", "Data2Vec2VisionModel"), ("cls", "Data2Vec2VisionForImageClassification")):
            out.append(Case(f"data2vec2-vision-{head}-{variant}", arch, config, _vision_inputs(config, head), **kwargs))
    for variant, extra in AUDIO_VARIANTS.items():
        config = Data2Vec2AudioConfig(**{**AUDIO, **extra})
        heads = (("model", "Data2Vec2AudioModel"), ("ctc", "Data2Vec2AudioForCTC"),
                 ("seq", "Data2Vec2AudioForSequenceClassification"))
        for head, arch in heads:
            # a "sum" CTC loss near 100 cannot agree to 1e-5 in float32 (see crosscheck.cases.audio)
            tol = {"loss": CTC_SUM_LOSS_TOLERANCE} if head == "ctc" and config.ctc_loss_reduction == "sum" else {}
            out.append(Case(f"data2vec2-audio-{head}-{variant}", arch, config, _audio_inputs(config, head),
                            tolerances=tol, **kwargs))
    for variant, extra in TEXT_VARIANTS.items():
        config = Data2Vec2TextConfig(**{**TEXT, **extra})
        for head, arch in (("model", "Data2Vec2TextModel"), ("cls", "Data2Vec2TextForSequenceClassification")):
            out.append(Case(f"data2vec2-text-{head}-{variant}", arch, config, _text_inputs(config, head), **kwargs))
    return out
