"""``python -m crosscheck.adapters_report``: what LoRA and int8 cost on the Keras classes, per
family, on the benchmark's workloads (``crosscheck.bench.WORKLOADS``, random weights, seeded):

- LoRA rank 8 (query/value): trainable parameters as a share of the backbone's;
- ``quantize("int8")``: the main output's max |int8 - fp32| over max |fp32|.

``--size tiny`` (default) or ``base`` (the checkpoints' sizes: a few GB of memory, minutes).
docs/training.md quotes its numbers.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from crosscheck.bench import WORKLOADS, Workload  # noqa: E402

# data2vec 2.0 text has no bench workload (no HF class to time it against): the 1.0 text shape
REPORT_WORKLOADS = {**WORKLOADS, "text2-cls-b8x128": Workload(
    "text2-cls-b8x128", "Data2Vec2TextForSequenceClassification", 8, 128, dict(num_labels=2), tiny_length=16)}
# one workload per family; the audio ones at 1 s (the error does not depend on the length)
FAMILY_WORKLOADS = {"text": "text-cls-b8x128", "audio": "audio-b2x10s", "vision": "vision-cls-b8x224",
                    "audio2": "audio2-ctc-b2x10s", "vision2": "vision2-cls-b8x224", "text2": "text2-cls-b8x128"}


def measure(name: str, size: str, rank: int = 8, seed: int = 0) -> dict:
    import keras

    import d2v_tf
    from d2v_common.spec import weight_spec

    workload = REPORT_WORKLOADS[name]
    config = workload.config(size)
    arrays = weight_spec(config, workload.architecture).random_arrays(seed)
    inputs = workload.inputs(config, size, seed + 1)
    if workload.modality == "audio":
        inputs = {"input_values": inputs["input_values"][:, : min(inputs["input_values"].shape[1], 16_000)]}
    cls = d2v_tf.model_class(workload.architecture)
    model = cls(config)
    model.load_arrays(arrays)
    reference = keras.ops.convert_to_numpy(getattr(model(**inputs), workload.main_output))
    spec = model.spec
    backbone = sum(int(np.prod(p.shape)) for p in spec.stored() if p.name.startswith(spec.base_prefix + ".") or spec.is_base_model)
    model.enable_lora(rank)
    lora = sum(int(np.prod(v.shape)) for v in model.trainable_variables if "lora_kernel" in v.path)
    del model
    quantized = cls(config)
    quantized.load_arrays(arrays)
    quantized.quantize("int8")
    out = keras.ops.convert_to_numpy(getattr(quantized(**inputs), workload.main_output))
    err = float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-30))
    return {"family": workload.family, "workload": name, "size": size, "backbone_params": int(backbone),
            "lora_params": lora, "lora_share": lora / backbone, "int8_rel_err": err}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crosscheck.adapters_report", description=__doc__)
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--families", default=",".join(FAMILY_WORKLOADS), help="comma-separated")
    args = parser.parse_args(argv)
    print(f"{'family':8} {'size':5} {'backbone params':>15} {'LoRA r8 params':>14} {'share':>7} {'int8 rel err':>12}")
    for family in args.families.split(","):
        row = measure(FAMILY_WORKLOADS[family], args.size)
        print(f"{family:8} {args.size:5} {row['backbone_params']:>15,} {row['lora_params']:>14,} "
              f"{row['lora_share']:>7.3%} {row['int8_rel_err']:>12.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
