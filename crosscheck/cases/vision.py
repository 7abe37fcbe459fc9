"""Vision cases: several config variants of the three classes."""

from __future__ import annotations

import numpy as np

from crosscheck.cases.base import SEGMENTATION_LOGITS_TOLERANCE, Case
from d2v_common.configs import Data2VecVisionConfig
from crosscheck.cases import tiny

SMALL = dict(tiny.VISION, num_labels=3)
BASE = dict(num_labels=10, image_size=224)

VARIANTS = {
    "plain": {},
    "relbias": dict(use_relative_position_bias=True, use_mask_token=True, use_absolute_position_embeddings=True),
    "shared-cls": dict(use_shared_relative_position_bias=True, use_mean_pooling=False, layer_scale_init_value=0.0),
    "aux-concat": dict(auxiliary_concat_input=True, auxiliary_num_convs=2, use_relative_position_bias=True),
}

HEADS = {
    "model": "Data2VecVisionModel",
    "cls": "Data2VecVisionForImageClassification",
    "seg": "Data2VecVisionForSemanticSegmentation",
}


def _inputs(config: Data2VecVisionConfig, head: str, size=None):
    h, w = size or config.image_size_hw

    def make(rng: np.random.Generator) -> dict:
        out = {"pixel_values": rng.standard_normal((2, config.num_channels, h, w)).astype(np.float32)}
        if head == "cls":
            out["labels"] = rng.integers(0, config.num_labels, size=(2,)).astype(np.int64)
        elif head == "seg":
            labels = rng.integers(0, config.num_labels, size=(2, h, w)).astype(np.int64)
            labels[0, : h // 4] = config.semantic_loss_ignore_index  # some ignored pixels
            out["labels"] = labels
        return out

    return make


def cases(size: str = "small") -> list[Case]:
    out = []
    if size == "base":
        config = Data2VecVisionConfig(**BASE, use_relative_position_bias=True)
        for head, arch in HEADS.items():
            out.append(Case(f"vision-{head}-base", arch, config, _inputs(config, head), hf_tf=True,
                            tolerances={"logits": SEGMENTATION_LOGITS_TOLERANCE} if head == "seg" else {}))
        return out
    for variant, extra in VARIANTS.items():
        config = Data2VecVisionConfig(**{**SMALL, **extra})
        for head, arch in HEADS.items():
            out.append(
                Case(
                    f"vision-{head}-{variant}",
                    arch,
                    config,
                    _inputs(config, head),
                    call_kwargs=dict(output_hidden_states=True, output_attentions=True),
                    tolerances={"logits": SEGMENTATION_LOGITS_TOLERANCE} if head == "seg" else {},
                    # HF's TF classes crash when use_mean_pooling=False (a known HF bug)
                    hf_tf=config.use_mean_pooling,
                )
            )
    # A non-square patch grid through interpolate_pos_encoding (config image stays square).
    config = Data2VecVisionConfig(**{**SMALL, **VARIANTS["relbias"]})
    for head in ("model", "seg"):
        out.append(
            Case(
                f"vision-{head}-interp",
                HEADS[head],
                config,
                _inputs(config, head, size=(24, 40)),
                call_kwargs=dict(interpolate_pos_encoding=True, output_hidden_states=True),
                tolerances={"logits": SEGMENTATION_LOGITS_TOLERANCE} if head == "seg" else {},
                hf_torch=head != "seg",
            )
        )
    return out
