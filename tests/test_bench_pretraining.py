"""The pretraining-step rows of ``python -m crosscheck.bench`` on tiny models (no timing
assertions: speed is measured by the bench, never here)."""

import numpy as np

from crosscheck import bench, bench_pretraining as B
from d2v_common.pretrain.data2vec2 import check_mask_counts


def test_workloads_are_the_released_base_recipes():
    """examples/data2vec/config/v2/base_{images,audio}_only_task.yaml: depth, prenet, clone_batch, decoder."""
    config, pcfg = B.WORKLOADS["pretrain-image-base-b2"].configs("base")
    assert (config.hidden_size, config.num_hidden_layers, config.num_prenet_layers, config.num_extra_tokens) == (
        768, 10, 2, 1)
    assert (pcfg.clone_batch, pcfg.average_top_k_layers, pcfg.cls_loss, pcfg.inverse_mask, pcfg.decoder_layers,
            pcfg.decoder_dim, pcfg.ema_local_encoder) == (16, 10, 0.01, True, 6, 768, True)
    config, pcfg = B.WORKLOADS["pretrain-audio-base-b2x2s"].configs("base")
    assert (config.num_hidden_layers, config.num_prenet_layers, config.use_alibi, config.conv_dim[0]) == (12, 0, True, 512)
    assert (pcfg.clone_batch, pcfg.average_top_k_layers, pcfg.decoder_kernel, pcfg.decoder_dim) == (8, 8, 7, 384)


def test_every_framework_row_runs_one_step_on_the_same_inputs():
    for name, workload in B.WORKLOADS.items():
        config, pcfg = workload.configs("tiny")
        inputs = workload.inputs("tiny", seed=1)
        assert {k: v.tolist() for k, v in inputs.items()} == {k: v.tolist() for k, v in workload.inputs("tiny", 1).items()}
        mask = inputs["precomputed_mask"]
        assert mask.dtype == bool and mask.shape[0] == workload.batch * pcfg.clone_batch
        check_mask_counts(mask)
        # every framework on the image recipe, d2v torch on the audio one (the suite's time)
        keys = list(B.FRAMEWORKS) if workload.modality == "image" else ["pretrain-torch"]
        result = B.run_workload(name, "tiny", keys, repeats=1, warmup=1, threads=1)
        assert set(result["rows"]) == set(keys) and not result["skipped"], result["skipped"]
        for key, row in result["rows"].items():
            assert np.isfinite(row["loss"]) and row["median_ms"] > 0 and len(row["times_ms"]) == 1, key
            assert row["rel_err"] <= 1e-4, key  # the same step: the same loss as d2v torch's
    assert set(B.FRAMEWORKS).isdisjoint(bench.ROWS) and set(B.WORKLOADS).isdisjoint(bench.WORKLOADS)
