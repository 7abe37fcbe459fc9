"""Summary statistics of data2vec 2.0 pretraining masks (numpy only).

One function, used on both sides: ``crosscheck/oracle_mask_stats.py`` runs it on masks drawn by
upstream fairseq's samplers (in the oracle's venv), ``tests/test_data2vec2_mask_stats.py`` on
masks drawn by ``d2v_common.pretrain.data2vec2.sample_mask``. The samplers draw from different
random streams, so the draws differ; their distributions should not.
"""

from __future__ import annotations

import numpy as np


def _runs(row: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a 1-D bool row."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def mask_statistics(masks, padding=None, grid: int | None = None) -> dict:
    """Statistics of ``masks`` (draws, rows, T) bool (True = masked); ``padding`` (rows, T) bool
    (True = padded) or None; ``grid``: the side of a square patch grid (images).

    ``rows``; ``masked_per_row`` (mean count) and ``masked_fraction`` (of the valid positions);
    ``rows_equal`` (fraction of draws whose rows all mask as many positions); ``clones_differ``
    (fraction of adjacent row pairs with different masks); ``masked_in_padding`` (fraction of
    masked positions that are padding); sequences: ``runs_per_row`` and ``mean_run`` (masked
    spans); images: ``right_masked`` / ``down_masked`` (a masked patch's right / lower
    neighbour is masked too: block structure) and ``kept_right_kept`` (the same for kept ones).
    """
    masks = np.asarray(masks, dtype=bool)
    draws, rows, length = masks.shape
    pad = np.zeros((rows, length), dtype=bool) if padding is None else np.asarray(padding, dtype=bool)
    valid = (~pad).sum()
    counts = masks.sum(axis=2)
    out = {
        "rows": int(rows),
        "masked_per_row": float(counts.mean()),
        "masked_fraction": float((masks & ~pad).sum() / (draws * valid)),
        "rows_equal": float((counts == counts[:, :1]).all(axis=1).mean()),
        "clones_differ": float((masks[:, 1:] != masks[:, :-1]).any(axis=2).mean()) if rows > 1 else 1.0,
        "masked_in_padding": float((masks & pad).sum() / max(1, masks.sum())),
    }
    if grid is None:
        runs = [_runs(row & ~p) for m in masks for row, p in zip(m, pad)]
        lengths = np.concatenate(runs)
        out["runs_per_row"] = float(np.mean([len(r) for r in runs]))
        out["mean_run"] = float(lengths.mean()) if lengths.size else 0.0
    else:
        g = masks.reshape(draws, rows, grid, grid)
        out["right_masked"] = float((g[..., :-1] & g[..., 1:]).sum() / max(1, g[..., :-1].sum()))
        out["down_masked"] = float((g[..., :-1, :] & g[..., 1:, :]).sum() / max(1, g[..., :-1, :].sum()))
        k = ~g
        out["kept_right_kept"] = float((k[..., :-1] & k[..., 1:]).sum() / max(1, k[..., :-1].sum()))
    return out
