"""``layout_map`` under ``keras.distribution.ModelParallel`` on two JAX CPU devices. The step runs in
a fresh JAX process whatever the suite's backend, so this file runs once, in the TensorFlow
process (test_keras_adapters.py, which every backend runs, has the in-process checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# one head per family (data2vec 1.0 and 2.0): each family's layout_map() under one fresh process
FAMILY_CASES = ["text-seqcls-relk", "audio-seq-plain", "vision-cls-plain", "data2vec2-text-cls-learned",
                "data2vec2-audio-seq-alibi", "data2vec2-vision-cls-plain"]

_LAYOUT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, keras
    import d2v_tf
    from crosscheck.cases import all_cases
    from crosscheck.training import deterministic_config
    from d2v_common.spec import weight_spec

    def one_step(model, arrays, x, y):
        model.load_arrays(arrays)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        loss = model.train_on_batch(x, y)
        return loss, model.state_arrays()

    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], keras.distribution.list_devices())
    report = {}
    for name in sys.argv[1:]:
        case = next(c for c in all_cases("small") if c.name == name)
        config = deterministic_config(case.config.copy(intermediate_size=64))
        arrays = weight_spec(config, case.architecture).random_arrays(0)
        cls = getattr(d2v_tf, "TF" + case.architecture)
        x = case.make_inputs(np.random.default_rng(0))
        y = x.pop("labels")
        plain_loss, plain = one_step(cls(config), arrays, x, y)
        parallel = keras.distribution.ModelParallel(layout_map=cls.layout_map(mesh), batch_dim_name="batch")
        with parallel.scope():
            model = cls(config)
            sharded = [v.path for v in model.variables if len(getattr(v.value.sharding, "device_set", ())) == 2
                       and not v.value.sharding.is_fully_replicated]
            loss, after = one_step(model, arrays, x, y)
        report[name] = {"sharded": len(sharded), "loss_diff": abs(float(loss) - float(plain_loss)),
                        "max_diff": max(float(np.max(np.abs(after[k] - plain[k]))) for k in plain)}
    print(json.dumps(report))
""")


def test_layout_map_model_parallel_step_equals_the_unsharded_step_in_every_family():
    """Two JAX CPU devices (a fresh process): one SGD step under ModelParallel with each family's
    ``layout_map`` shards the encoder's dense kernels and equals the single-device step."""
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", _LAYOUT_SCRIPT, *FAMILY_CASES], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(report) == FAMILY_CASES
    for name, got in report.items():
        assert got["sharded"] > 0, (name, got)
        assert got["loss_diff"] < 1e-5 and got["max_diff"] < 1e-5, (name, got)
