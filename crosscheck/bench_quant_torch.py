"""Benchmark rows for PyTorch dynamic int8 (``d2v_torch.quantize_dynamic_int8``): the same
workload as the float32 row, Linear layers in int8 with dynamically quantised activations,
timed and compared (speed and error) with ``torch-fp32``. ``crosscheck.bench`` adds these rows
to its table (``ROWS``) and builds them through ``build_rows``."""

from __future__ import annotations

import numpy as np

# row key -> (label, the row it is compared with)
ROWS = {"torch-int8": ("d2v torch int8 (dynamic)", "torch-fp32")}


def build_rows(workload, config, arrays: dict, inputs: dict) -> dict:
    """``{"torch-int8": run}``: ``run()`` returns the workload's main output as numpy."""
    import torch

    import d2v_torch

    model = d2v_torch.model_class(workload.architecture)(config)
    model.load_arrays(arrays)
    quantized = d2v_torch.quantize_dynamic_int8(model)
    pt_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    field_ = workload.main_output

    def run() -> np.ndarray:
        with torch.inference_mode():
            return getattr(quantized(**pt_inputs, return_dict=True), field_).float().numpy()

    return {"torch-int8": run}
