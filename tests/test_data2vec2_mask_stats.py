"""d2v's own data2vec 2.0 mask samplers draw masks distributed as upstream fairseq's.

``cases.json`` of the pretraining fixtures holds, under ``mask_statistics``, the statistics of
masks drawn by upstream's samplers through the modality encoder (the oracle's ``step.py
--no-mask`` path, ``python -m crosscheck.fairseq_oracle mask-stats``): for the released base
configs' mask recipes and a few others. d2v's ``sample_mask`` (seeded numpy Generator) must give
the same statistics: counts per row, equal rows, clones that differ, no masks in padding, and the
block (images) or span (audio, text) structure.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from crosscheck.mask_stats import mask_statistics
from d2v_common.pretrain import data2vec2 as P
from tests.fixture_paths import DATA2VEC2_PRETRAINING_DIR

with open(os.path.join(DATA2VEC2_PRETRAINING_DIR, "cases.json")) as f:
    MASK_STATS = json.load(f)["mask_statistics"]
CONFIGS = MASK_STATS["configs"]
MODALITY = {"image": "vision", "audio": "audio", "text": "text"}

# Sampling noise of 30 upstream draws (d2v's statistics from 600 draws sit within 1.5% of them):
# absolute for fractions and probabilities, relative for counts and lengths. A wrong recipe (the
# inverse mask's p, spans of another length, masks in padding) moves them by far more.
ABSOLUTE = {"masked_fraction": 0.025, "rows_equal": 0.0, "clones_differ": 0.02, "masked_in_padding": 0.02,
            "right_masked": 0.03, "down_masked": 0.03, "kept_right_kept": 0.03}
RELATIVE = {"masked_per_row": 0.05, "runs_per_row": 0.08, "mean_run": 0.08}


def _d2v_statistics(config: dict, draws: int) -> dict:
    pcfg = P.Data2Vec2PretrainingConfig(modality=MODALITY[config["modality"]], **config["mask"])
    up = config["upstream"]
    c = config["clone_batch"]
    length = up["length"]
    if up["valid_lengths"] is None:
        rows, padding = config["batch"] * c, None
    else:
        valid = np.repeat(up["valid_lengths"], c)
        rows, padding = len(valid), np.arange(length)[None, :] >= valid[:, None]
    rng = np.random.default_rng(0)
    masks = np.stack([P.sample_mask(pcfg, rows, length, padding, rng) for _ in range(draws)])
    return mask_statistics(masks, padding, config.get("grid"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_d2v_masks_have_upstreams_statistics(name):
    config = CONFIGS[name]
    up = config["upstream"]
    ours = _d2v_statistics(config, 2 * MASK_STATS["draws"])
    assert ours["rows"] == up["rows"]
    checked = set()
    for key, tol in ABSOLUTE.items():
        if key in up:
            assert abs(ours[key] - up[key]) <= tol, (key, ours[key], up[key])
            checked.add(key)
    for key, tol in RELATIVE.items():
        if key in up:
            assert abs(ours[key] - up[key]) <= tol * abs(up[key]), (key, ours[key], up[key])
            checked.add(key)
    assert checked == set(up) - {"rows", "length", "valid_lengths"}  # every statistic recorded is compared
