"""data2vec 2.0 pretraining-step rows of ``python -m crosscheck.bench``.

One training step of the released base recipes (fairseq's examples/data2vec/config/v2
``base_images_only_task.yaml`` and ``base_audio_only_task.yaml``: their model, ``clone_batch``,
targets, decoder and mask recipe) on a batch of 2: the student on ``clone_batch`` masked copies,
the decoder, the EMA teacher's targets, the loss and its backward pass (no optimizer update, no
EMA update: what fairseq's model forward + backward do). Every framework gets the same inputs,
the mask included (drawn once, passed as ``precomputed_mask``), so each does the same work.

A framework is one entry of ``FRAMEWORKS``: its row key, label, Keras backend (rows on another
Keras backend than this process's are timed in a subprocess) and a builder ``(workload, config,
pretraining_config, inputs, seed) -> run``, where ``run()`` does one step and returns the loss.

``python -m crosscheck.bench_pretraining --oracle WORK`` also times the ORIGINAL code (fairseq,
in the oracle tools' venv; ``WORK`` holds its ``venv/`` and ``shim/``) on the same config, inputs
and thread count, side by side with d2v torch (``crosscheck/oracle_step_time.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Released base recipes (fairseq field names). Regularisers d2v's step does not apply (layerdrop,
# prenet_layerdrop, prenet_dropout, drop path) are 0 here, for the oracle too: same work.
BASE_IMAGE = {
    "_name": "data2vec_multi", "depth": 10, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4.0, "norm_eps": 1e-6,
    "clone_batch": 16, "average_top_k_layers": 10, "instance_norm_target_layer": True, "layer_norm_target_layer": False,
    "layer_norm_targets": True, "end_of_block_targets": False, "cls_loss": 0.01, "ema_encoder_only": False,
    "ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100000, "loss_beta": 0.0, "loss_scale": None,
    "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "supported_modality": "IMAGE",
    "modalities": {"image": {
        "inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 3, "mask_noise_std": 0.01,
        "prenet_depth": 2, "ema_local_encoder": True, "num_extra_tokens": 1, "init_extra_token_zero": False,
        "use_alibi_encoder": False,
        "decoder": {"decoder_dim": 768, "decoder_groups": 16, "decoder_kernel": 3, "decoder_layers": 6,
                    "input_dropout": 0.0}}},
}
BASE_AUDIO = {
    "_name": "data2vec_multi", "depth": 12, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4.0, "norm_eps": 1e-5,
    "clone_batch": 8, "average_top_k_layers": 8, "instance_norm_target_layer": True, "layer_norm_target_layer": False,
    "layer_norm_targets": False, "ema_encoder_only": False, "ema_decay": 0.999, "ema_end_decay": 0.99999,
    "ema_anneal_end_step": 75000, "loss_beta": 0.0, "loss_scale": None, "layerdrop": 0.0,
    "encoder_dropout": 0.1, "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
    "supported_modality": "AUDIO",
    "modalities": {"audio": {
        "feature_encoder_spec": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        "conv_pos_depth": 5, "conv_pos_width": 95, "conv_pos_groups": 16, "prenet_depth": 0, "mask_prob": 0.5,
        "mask_prob_adjust": 0.05, "inverse_mask": False, "mask_length": 5, "mask_noise_std": 0.01,
        "mask_dropout": 0.0, "add_masks": False, "ema_local_encoder": False, "use_alibi_encoder": True,
        "prenet_layerdrop": 0.0, "prenet_dropout": 0.0, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True,
        "decoder": {"input_dropout": 0.1, "decoder_dim": 384, "decoder_groups": 16, "decoder_kernel": 7,
                    "decoder_layers": 4}}},
}
# --size tiny (smoke runs): the same recipes, narrow and shallow
# (no dropout and no mask noise either: each framework draws its own, and the smoke run checks
# that every row computes the same loss)
TINY_CHANGES = {"depth": 2, "embed_dim": 32, "num_heads": 4, "average_top_k_layers": 2, "clone_batch": 2,
                "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0}
TINY_MODALITY = {
    "image": {"prenet_depth": 1, "embed_dim": 32, "input_size": 32, "patch_size": 8, "mask_noise_std": 0.0,
              "decoder": {"decoder_dim": 16, "decoder_groups": 4, "decoder_layers": 2, "input_dropout": 0.0}},
    "audio": {"feature_encoder_spec": "[(32, 10, 5)] + [(32, 3, 2)] * 2", "conv_pos_depth": 2, "conv_pos_width": 8,
              "conv_pos_groups": 4, "mask_noise_std": 0.0,
              "decoder": {"decoder_dim": 16, "decoder_groups": 4, "decoder_layers": 2, "input_dropout": 0.0}},
}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass(frozen=True)
class PretrainingWorkload:
    name: str
    modality: str  # fairseq's: "image" or "audio"
    model_cfg: dict
    batch: int = 2
    length: int = 0  # audio samples per row (images: the config's input_size)
    tiny_length: int = 0

    @property
    def architecture(self) -> str:
        return {"image": "Data2Vec2VisionForPreTraining", "audio": "Data2Vec2AudioForPreTraining"}[self.modality]

    def fairseq_cfg(self, size: str) -> dict:
        if size == "base":
            return copy.deepcopy(self.model_cfg)
        return _merge(self.model_cfg, {**TINY_CHANGES, "modalities": {self.modality: TINY_MODALITY[self.modality]}})

    def configs(self, size: str):
        """(backbone config, Data2Vec2PretrainingConfig) of d2v, read from the fairseq config."""
        from d2v_common.checkpoints.fairseq import config_from_model_cfg
        from d2v_common.pretrain.data2vec2 import Data2Vec2PretrainingConfig

        cfg = self.fairseq_cfg(size)
        return config_from_model_cfg(cfg, self.modality), Data2Vec2PretrainingConfig.from_fairseq(cfg, self.modality)

    def inputs(self, size: str, seed: int = 0) -> dict[str, np.ndarray]:
        """The call's inputs (``pixel_values``, or ``input_values`` and ``attention_mask`` with
        the second row 3/4 long) and the ``precomputed_mask`` every framework gets."""
        from d2v_common import data2vec2 as D
        from d2v_common.pretrain.data2vec2 import sample_mask

        config, pcfg = self.configs(size)
        rng = np.random.default_rng(seed)
        rows = self.batch * pcfg.clone_batch
        if self.modality == "image":
            side = config.image_size
            out = {"pixel_values": rng.standard_normal((self.batch, config.num_channels, side, side)).astype(np.float32)}
            out["precomputed_mask"] = sample_mask(pcfg, rows, config.grid_size**2, None, rng)
            return out
        n = self.length if size == "base" else self.tiny_length
        values = rng.standard_normal((self.batch, n)).astype(np.float32)
        attention = np.ones((self.batch, n), np.int64)
        attention[1:, n * 3 // 4:] = 0
        values[attention == 0] = 0.0
        frames = int(D.frame_lengths(config, n))
        valid = np.array([int(D.frame_lengths(config, int(a.sum()))) for a in attention])
        padding = np.repeat(np.arange(frames)[None, :] >= valid[:, None], pcfg.clone_batch, axis=0)
        mask = sample_mask(pcfg, rows, frames, padding, rng)
        return {"input_values": values, "attention_mask": attention, "precomputed_mask": mask}


WORKLOADS = {w.name: w for w in [
    PretrainingWorkload("pretrain-image-base-b2", "image", BASE_IMAGE),
    PretrainingWorkload("pretrain-audio-base-b2x2s", "audio", BASE_AUDIO, length=32_000, tiny_length=4000),
]}


# ----------------------------------------------------------------------------- frameworks


def _d2v_torch_model(workload: PretrainingWorkload, config, pcfg, seed: int):
    import torch

    import d2v_torch

    torch.manual_seed(seed)
    return getattr(d2v_torch, workload.architecture)(config, pcfg, seed=seed)


def _d2v_torch_step(workload: PretrainingWorkload, config, pcfg, inputs: dict, seed: int) -> Callable[[], float]:
    import torch

    model = _d2v_torch_model(workload, config, pcfg, seed)
    model.train()
    args = {k: torch.from_numpy(v) for k, v in inputs.items()}
    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> float:
        for p in params:
            p.grad = None
        out = model(**args)
        out.loss.backward()
        return float(out.loss.detach())

    return run


def _d2v_keras_step(workload: PretrainingWorkload, config, pcfg, inputs: dict, seed: int) -> Callable[[], float]:
    """Forward + backward of the Keras class inside the backend's compiled step: one XLA
    ``tf.function`` on TensorFlow, one ``jax.jit`` of ``stateless_call`` on JAX. Traced, the
    student sees every position (the masked ones are hidden from attention: fixed shapes)."""
    import keras

    import d2v_tf

    keras.utils.set_random_seed(seed)
    model = getattr(d2v_tf, "TF" + workload.architecture)(config, pcfg, seed=seed)
    # torch's initial weights, so the rows' losses compare (the "rel_err" column)
    model.load_pretraining_arrays(_d2v_torch_model(workload, config, pcfg, seed).pretraining_arrays())
    variables = model.trainable_variables
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        batch = {k: tf.constant(v) for k, v in inputs.items()}

        @tf.function(jit_compile=True)
        def step(batch):
            with tf.GradientTape() as tape:
                loss = model(batch, training=True).loss
            return loss, tape.gradient(loss, variables)

        return lambda: float(step(batch)[0])
    import jax

    def loss_fn(trainable, non_trainable, batch):
        out, _ = model.stateless_call(trainable, non_trainable, batch, training=True)
        return out.loss

    jitted = jax.jit(jax.value_and_grad(loss_fn))
    args = ([v.value for v in variables], [v.value for v in model.non_trainable_variables], inputs)

    def run() -> float:
        loss, grads = jitted(*args)
        jax.block_until_ready(grads)
        return float(loss)

    return run


@dataclass(frozen=True)
class Framework:
    label: str
    build: Callable  # (workload, config, pcfg, inputs, seed) -> run() -> loss
    keras_backend: str | None = None  # rows on another Keras backend run in a subprocess


FRAMEWORKS: dict[str, Framework] = {
    "pretrain-torch": Framework("d2v torch fp32 train step", _d2v_torch_step),
    "pretrain-keras-xla": Framework("d2v keras (TF XLA) fp32 train step", _d2v_keras_step, "tensorflow"),
    "pretrain-keras-jax": Framework("d2v keras (JAX jit) fp32 train step", _d2v_keras_step, "jax"),
}


# --------------------------------------------------------------------------------- timing


def _time(run: Callable[[], float], repeats: int, warmup: int) -> dict:
    start = time.perf_counter()
    loss = run()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"times_s": times, "first_call_s": first, "loss": loss}


def _row(workload: PretrainingWorkload, key: str, size: str, repeats: int, warmup: int, seed: int) -> dict:
    config, pcfg = workload.configs(size)
    inputs = workload.inputs(size, seed + 1)
    return _time(FRAMEWORKS[key].build(workload, config, pcfg, inputs, seed), repeats, warmup)


def _row_in_subprocess(workload, key, size, repeats, warmup, seed, threads) -> dict:
    env = dict(os.environ, KERAS_BACKEND=FRAMEWORKS[key].keras_backend)
    cmd = [sys.executable, "-m", "crosscheck.bench_pretraining", "--worker", workload.name, key, "--size", size,
           "--repeats", str(repeats), "--warmup", str(warmup), "--seed", str(seed), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_workload(name: str, size: str, keys: list[str], repeats: int, warmup: int, seed: int = 0,
                 threads: int | None = None) -> dict:
    """Time every pretraining row of workload ``name``: a summary shaped like
    ``crosscheck.bench.run_workload``'s (rows with median/min/max ms, samples/s, first call; the
    loss of each row's first step, and its relative difference from d2v torch's)."""
    workload = WORKLOADS[name]
    rows, skipped = {}, {}
    for key in [k for k in FRAMEWORKS if k in keys]:
        try:
            backend = FRAMEWORKS[key].keras_backend
            if backend is not None and backend != os.environ.get("KERAS_BACKEND", "tensorflow"):
                rows[key] = _row_in_subprocess(workload, key, size, repeats, warmup, seed, threads or os.cpu_count())
            else:
                rows[key] = _row(workload, key, size, repeats, warmup, seed)
        except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
            skipped[key] = f"{type(e).__name__}: {e}"[:200]
    reference = rows.get("pretrain-torch", {}).get("loss")
    out = {}
    for key, r in rows.items():
        t = sorted(r["times_s"])
        med = statistics.median(t)
        out[key] = {"label": FRAMEWORKS[key].label, "median_ms": med * 1e3, "min_ms": t[0] * 1e3,
                    "max_ms": t[-1] * 1e3, "iqr_ms": float(np.subtract(*np.percentile(t, [75, 25]))) * 1e3,
                    "samples_per_s": workload.batch / med, "first_call_s": r["first_call_s"],
                    "times_ms": [x * 1e3 for x in r["times_s"]], "loss": r["loss"]}
        if reference:
            out[key]["rel_err"] = abs(r["loss"] - reference) / abs(reference)
    return {"workload": name, "architecture": workload.architecture, "batch": workload.batch, "rows": out,
            "skipped": skipped}


# --------------------------------------------------------------------------- the original


class _Oracle:
    """Upstream fairseq's step (``Data2VecMultiModel``, same config, inputs and mask, forward +
    backward of fairseq's objective) in the oracle's venv, one step per ``step()`` call."""

    def __init__(self, workload: PretrainingWorkload, size: str, seed: int, threads: int, oracle: str, tools: str):
        here = os.path.dirname(os.path.abspath(__file__))
        self._tmp = tempfile.TemporaryDirectory()
        np.savez(os.path.join(self._tmp.name, "inputs.npz"), **workload.inputs(size, seed + 1))
        with open(os.path.join(self._tmp.name, "cfg.json"), "w") as f:
            json.dump({"modality": workload.modality, "model_cfg": workload.fairseq_cfg(size)}, f)
        env = dict(os.environ, PYTHONPATH=f"{oracle}/shim{os.pathsep}{tools}")
        cmd = [f"{oracle}/venv/bin/python", os.path.join(here, "oracle_step_time.py"), self._tmp.name, str(threads),
               str(seed)]
        self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        while line and not line.startswith("{"):
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the oracle stopped (exit code {self._proc.wait()})")
        return json.loads(line)

    def step(self) -> tuple[float, float]:
        self._proc.stdin.write("step\n")
        self._proc.stdin.flush()
        out = self._read()
        return out["s"], out["loss"]

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait()
        self._tmp.cleanup()


def compare_with_oracle(names, size, repeats, warmup, seed, threads, oracle, tools) -> list[dict]:
    """d2v torch and the original, same workload and thread count, their steps interleaved (each
    round runs both, in alternating order, after ``warmup`` untimed steps of each)."""
    import torch

    torch.set_num_threads(threads)
    out = []
    for name in names:
        workload = WORKLOADS[name]
        config, pcfg = workload.configs(size)
        ours = FRAMEWORKS["pretrain-torch"].build(workload, config, pcfg, workload.inputs(size, seed + 1), seed)
        up = _Oracle(workload, size, seed, threads, oracle, tools)
        try:
            losses = (up.step()[1], ours())
            for _ in range(max(warmup - 1, 0)):
                up.step(), ours()
            t_up, t_ours = [], []
            for r in range(repeats):
                for which in (("up", "ours") if r % 2 == 0 else ("ours", "up")):
                    if which == "up":
                        t_up.append(up.step()[0])
                    else:
                        start = time.perf_counter()
                        ours()
                        t_ours.append(time.perf_counter() - start)
        finally:
            up.close()
        med_up, med_ours = statistics.median(t_up), statistics.median(t_ours)
        out.append({"workload": name, "threads": threads, "oracle_median_ms": med_up * 1e3,
                    "oracle_times_ms": [t * 1e3 for t in t_up], "d2v_torch_median_ms": med_ours * 1e3,
                    "d2v_torch_times_ms": [t * 1e3 for t in t_ours], "speedup": med_up / med_ours,
                    "speedup_min": min(t_up) / min(t_ours), "oracle_loss": losses[0], "d2v_torch_loss": losses[1]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m crosscheck.bench_pretraining", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)")
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--oracle", metavar="WORK", help="time the original code too (WORK: the oracle's venv/ and shim/)")
    p.add_argument("--tools", default="/work/shared/tools/d2v2_oracle", help="the oracle tools' folder (step.py)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "ROW"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        name, key = args.worker
        print(json.dumps(_row(WORKLOADS[name], key, args.size, args.repeats, args.warmup, args.seed)))
        return 0
    names = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    if args.oracle:
        result = compare_with_oracle(names, args.size, args.repeats, args.warmup, args.seed, args.threads,
                                     args.oracle, args.tools)
        for r in result:
            print(f"{r['workload']}: original (fairseq) {r['oracle_median_ms']:.0f} ms, d2v torch "
                  f"{r['d2v_torch_median_ms']:.0f} ms median ({args.threads} threads, {args.repeats} steps): "
                  f"d2v {r['speedup']:.2f}x (fastest steps {r['speedup_min']:.2f}x); losses "
                  f"{r['oracle_loss']:.6g} / {r['d2v_torch_loss']:.6g} (own random weights)")
    else:
        result = [run_workload(n, args.size, list(FRAMEWORKS), args.repeats, args.warmup, args.seed, args.threads)
                  for n in names]
        print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
