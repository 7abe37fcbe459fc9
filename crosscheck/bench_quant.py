"""Quantized-inference rows of ``python -m crosscheck.bench``: each framework's int8 path next to
its own float32 row, on the same weights and inputs.

A framework is one ``QUANT_FRAMEWORKS`` entry: its row keys (label, reference row) and a builder
returning ``{row key: () -> main output as numpy}``. ``crosscheck.bench`` adds the rows to its
``ROWS`` table and calls every builder; "vs ref" is then the float32 row's time over the int8 one.

- ``keras-int8``: d2v's Keras model after ``model.quantize("int8")`` (Keras' int8 ``Dense``:
  per-channel weights, per-token activations), run as a TF graph (``make_fast(jit_compile=False)``),
  against ``keras-graph`` (the float32 graph).
- ``torch-int8``: d2v's PyTorch model after ``d2v_torch.quantize_dynamic_int8`` (Linear layers
  in int8, activations quantized dynamically), against ``torch-fp32``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class QuantFramework:
    # row key -> (label, the row it is compared with)
    rows: dict[str, tuple[str, str | None]]
    # (workload, config, canonical arrays, inputs, wanted row keys) -> {row key: () -> numpy}
    build: Callable


def _keras_int8_rows(workload, config, arrays: dict, inputs: dict, keys: list[str]) -> dict:
    import keras

    import d2v_tf

    model = d2v_tf.model_class(workload.architecture)(config)
    model.load_arrays(arrays)
    model.quantize("int8")
    fast = model.make_fast(jit_compile=False)
    field = workload.main_output
    return {"keras-int8": lambda: keras.ops.convert_to_numpy(getattr(fast(**inputs), field))}


def _torch_int8_rows(workload, config, arrays: dict, inputs: dict, keys: list[str]) -> dict:
    import torch

    import d2v_torch

    model = d2v_torch.model_class(workload.architecture)(config)
    model.load_arrays(arrays)
    quantized = d2v_torch.quantize_dynamic_int8(model)
    pt_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    field = workload.main_output

    def run():
        with torch.inference_mode():
            return getattr(quantized(**pt_inputs, return_dict=True), field).float().numpy()

    return {"torch-int8": run}


QUANT_FRAMEWORKS: dict[str, QuantFramework] = {
    "keras": QuantFramework({"keras-int8": ("d2v keras int8 graph (quantize)", "keras-graph")}, _keras_int8_rows),
    "torch": QuantFramework({"torch-int8": ("d2v torch int8 (dynamic)", "torch-fp32")}, _torch_int8_rows),
}
QUANT_ROWS: dict[str, tuple[str, str | None]] = {
    key: row for framework in QUANT_FRAMEWORKS.values() for key, row in framework.rows.items()
}
