"""``python -m crosscheck.bench --memory``: peak training memory with and without gradient
checkpointing, d2v PyTorch and d2v Keras (TensorFlow backend).

Each row is one fresh subprocess (``--memory-worker``): it builds the head model from its config
(random weights), then resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and runs
``steps`` training steps (forward in training mode, built-in loss, backward, SGD update; Keras
through ``train_on_batch``, a ``tf.function`` step as ``fit`` runs). Reported: the peak resident
set size of the steps ("peak"), that peak above the RSS of the built model ("step memory":
activations, gradients, workspace; for Keras the first step's graph tracing too, the same in
both modes), and the median time of the steps after the first. Workloads, batch 1: text
512 tokens (sequence classification), vision 224 px (image classification), audio 10 s at
16 kHz (sequence classification; ``audio-frozen``: the same with ``freeze_feature_encoder()``, as
HF's speech fine-tuning runs).

Peak RSS counts memory the allocator keeps after tensors are freed. glibc's malloc raises its
mmap threshold as large blocks are freed, so later activations come from its heap, and freed heap
memory stays resident where a live block sits above it. Checkpointing frees and reallocates a
block's activations once per block in the backward pass, so it pays most for this.
``--malloc-mmap-threshold 131072`` runs every row (both modes) with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed there: blocks over 128 KiB are mapped on their own and go back
to the system when freed, so the peak is that of the memory in use (jemalloc or tcmalloc,
which Intel's PyTorch CPU guides preload, return freed memory too).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from crosscheck.cases import audio as audio_cases
from crosscheck.cases import text as text_cases
from crosscheck.cases import tiny
from crosscheck.cases import vision as vision_cases
from d2v_common.io_utils import positive_int

FRAMEWORKS = ("torch", "keras")
# family -> (architecture, base config fields, tiny config fields (smoke runs))
WORKLOADS = {
    "text": ("Data2VecTextForSequenceClassification", dict(text_cases.BASE, num_labels=2),
             dict(tiny.TEXT, num_labels=2, max_position_embeddings=40)),
    "vision": ("Data2VecVisionForImageClassification",
               dict(vision_cases.BASE, use_relative_position_bias=True), dict(tiny.VISION, num_labels=3)),
    "audio": ("Data2VecAudioForSequenceClassification", dict(audio_cases.BASE), dict(tiny.AUDIO, num_labels=3)),
}
# HF's speech fine-tuning recipe freezes the conv feature encoder (``freeze_feature_encoder()``): the
# same audio model trained that way, a workload of its own
WORKLOADS["audio-frozen"] = WORKLOADS["audio"]
FROZEN_FEATURE_ENCODER = {"audio-frozen"}
# the inputs' size at base size: tokens, pixels, seconds of 16 kHz audio (tiny: what tiny configs take)
INPUT_SIZE = {"base": {"text": 512, "vision": 224, "audio": 10.0}, "tiny": {"text": 32, "vision": 32, "audio": 0.1}}


def _modality(family: str) -> str:
    """A workload's modality: "audio-frozen" -> "audio"."""
    return family.split("-")[0]
TARGET_REDUCTION = 0.40  # issue 30: at least 40% less peak training memory with checkpointing


def _config(family: str, size: str):
    from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig

    config_class = {"text": Data2VecTextConfig, "vision": Data2VecVisionConfig,
                    "audio": Data2VecAudioConfig}[_modality(family)]
    _, base, small = WORKLOADS[family]
    return config_class(**(base if size == "base" else small))


def _inputs(family: str, size: str, config, batch: int = 1) -> dict:
    """One batch of ``batch`` examples, with their labels."""
    rng = np.random.default_rng(0)
    n = INPUT_SIZE[size][_modality(family)]
    labels = np.ones(batch, np.int64)
    if family == "text":
        ids = rng.integers(3, config.vocab_size, (batch, n))
        ids[:, 0], ids[:, -1] = 0, 2
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    if family == "vision":
        return {"pixel_values": rng.standard_normal((batch, 3, n, n)).astype(np.float32), "labels": labels}
    return {"input_values": rng.standard_normal((batch, int(n * 16000))).astype(np.float32), "labels": labels}


def _rss_kb() -> tuple[int, int]:
    """(current, peak) resident set size of this process in kB (Linux's /proc/self/status)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _reset_peak() -> None:
    """The peak RSS restarts from the current RSS (Linux >= 4.0), so it is the steps' own."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(framework: str, family: str, checkpointing: bool, size: str, steps: int, threads: int,
           batch_size: int = 1) -> dict:
    """Runs in a fresh process: build, then ``steps`` training steps; memory and times."""
    architecture = WORKLOADS[family][0]
    config = _config(family, size)
    inputs = _inputs(family, size, config, batch_size)
    import torch  # both rows pay the same imports

    torch.set_num_threads(threads)
    if framework == "torch":
        import d2v_torch

        model = getattr(d2v_torch, architecture)(config).train()
        if family in FROZEN_FEATURE_ENCODER:
            model.freeze_feature_encoder()
        if checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        batch = {k: torch.from_numpy(v) for k, v in inputs.items()}

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()
    else:
        import keras
        import tensorflow as tf

        import d2v_tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        model = getattr(d2v_tf, "TF" + architecture)(config)
        if family in FROZEN_FEATURE_ENCODER:
            model.freeze_feature_encoder()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.compile(optimizer=keras.optimizers.SGD(1e-4), jit_compile=False)
        x = {k: v for k, v in inputs.items() if k != "labels"}

        def step():
            model.train_on_batch(x, inputs["labels"])
    _reset_peak()
    baseline, _ = _rss_kb()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    _, peak = _rss_kb()
    return {"framework": framework, "family": family, "checkpointing": checkpointing, "batch": batch_size,
            "model_mb": baseline / 1024, "peak_mb": peak / 1024, "step_mb": (peak - baseline) / 1024,
            "step_seconds": statistics.median(seconds[1:] or seconds), "first_step_seconds": seconds[0]}


def worker_environment(malloc_mmap_threshold: int | None = None) -> dict:
    """The rows' environment: the TensorFlow backend, and glibc's fixed mmap threshold if asked."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # the rows measure the default unless asked
    if malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    return env


def measure(size: str = "base", families=None, frameworks=FRAMEWORKS, steps: int = 3,
            threads: int | None = None, batch: int = 1, malloc_mmap_threshold: int | None = None) -> list[dict]:
    """Every (framework, family, checkpointing) row, each in its own subprocess."""
    threads = threads or os.cpu_count() or 1
    env = worker_environment(malloc_mmap_threshold)
    rows = []
    for family in families or WORKLOADS:
        for framework in frameworks:
            for checkpointing in (False, True):
                cmd = [sys.executable, "-m", "crosscheck.bench_memory", "--worker", framework, family,
                       str(int(checkpointing)), "--size", size, "--steps", str(steps), "--threads", str(threads),
                       "--batch", str(batch)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    error = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
                    rows.append({"framework": framework, "family": family, "checkpointing": checkpointing,
                                 "error": error})
                else:
                    rows.append(json.loads(lines[-1]))
                print(f"  {framework} {family} checkpointing={checkpointing}: done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """A markdown table: one line per framework and family, plain vs checkpointed."""
    by_key = {(r["framework"], r["family"], r["checkpointing"]): r for r in rows}
    lines = [
        "| framework | workload | peak MB plain | peak MB checkpointed | peak saved | step MB plain | "
        "step MB checkpointed | step memory saved | step s plain | step s checkpointed | time cost |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for framework, family in dict.fromkeys((r["framework"], r["family"]) for r in rows):
        plain, ckpt = by_key.get((framework, family, False), {}), by_key.get((framework, family, True), {})
        if "error" in plain or "error" in ckpt or not plain or not ckpt:
            lines.append(f"| {framework} | {family} | error: {plain.get('error') or ckpt.get('error')} |")
            continue
        lines.append(
            f"| {'d2v torch' if framework == 'torch' else 'd2v keras (TF)'} | {family} "
            f"| {plain['peak_mb']:.0f} | {ckpt['peak_mb']:.0f} | {1 - ckpt['peak_mb'] / plain['peak_mb']:.0%} "
            f"| {plain['step_mb']:.0f} | {ckpt['step_mb']:.0f} | {1 - ckpt['step_mb'] / plain['step_mb']:.0%} "
            f"| {plain['step_seconds']:.2f} | {ckpt['step_seconds']:.2f} "
            f"| {ckpt['step_seconds'] / plain['step_seconds'] - 1:+.0%} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-steps", type=positive_int, default=3,
                        help="--memory: training steps per row (the first is not timed; default 3)")
    parser.add_argument("--memory-families", help=f"--memory: comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--memory-batch", type=positive_int, default=1, help="--memory: examples per step (default 1)")
    parser.add_argument("--memory-malloc-mmap-threshold", type=positive_int, metavar="BYTES",
                        help="--memory: run the rows with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (freed large "
                             "blocks go back to the system; default: glibc's own)")


def run(size: str, steps: int, threads: int, families: str | None, json_path: str | None, batch: int = 1,
        malloc_mmap_threshold: int | None = None) -> int:
    """What ``python -m crosscheck.bench --memory`` does: measure, print the table (and JSON)."""
    rows = measure(size, families.split(",") if families else None, steps=steps, threads=threads, batch=batch,
                   malloc_mmap_threshold=malloc_mmap_threshold)
    if json_path == "-":
        print(json.dumps(rows))
        return 0
    print(f"Peak training memory, batch {batch} (text {INPUT_SIZE[size]['text']} tokens, vision "
          f"{INPUT_SIZE[size]['vision']} px, audio {INPUT_SIZE[size]['audio']} s), {threads} threads, {size} size"
          + (f", MALLOC_MMAP_THRESHOLD_={malloc_mmap_threshold}:" if malloc_mmap_threshold else ", glibc's malloc as is:"))
    print(table(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosscheck.bench_memory", description=__doc__)
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "FAMILY", "CHECKPOINTING"))
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=positive_int, default=1, help="examples per step (default 1)")
    parser.add_argument("--families", help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--malloc-mmap-threshold", type=positive_int, metavar="BYTES",
                        help="run the rows with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072: freed large "
                             "blocks go back to the system; default: glibc's own)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.worker:
        framework, family, checkpointing = args.worker
        print(json.dumps(worker(framework, family, bool(int(checkpointing)), args.size, args.steps, args.threads,
                                args.batch)))
        return 0
    return run(args.size, args.steps, args.threads, args.families, args.json, args.batch, args.malloc_mmap_threshold)


if __name__ == "__main__":
    sys.exit(main())
