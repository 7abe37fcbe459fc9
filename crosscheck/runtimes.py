"""Runtime columns of the parity table (``python -m crosscheck --runtimes onnx,torch-export``).

Every export format of ``d2v_common.export`` is a runtime here, with nothing to register:
the case's model is built in the format's framework from the case's weights, exported into a
temporary folder with the format's ``export``, run with the format's ``run`` on the case's
inputs, and compared with that eager model's outputs on the exported fields (tolerance: the
format's). A new format (the Keras ``saved-model`` and ``litert``) needs only a model builder
for its framework in ``crosscheck.models.MODEL_BUILDERS`` (both frameworks are there already).
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

from crosscheck.cases.base import Case
from crosscheck.models import MODEL_BUILDERS
from d2v_common import export as common


@dataclass
class RuntimeResult:
    """One cell: the max abs diff over the exported fields, or why the case does not apply."""

    runtime: str
    max_diff: float | None = None
    tolerance: float | None = None
    skipped: str | None = None  # the case has inputs or options an artifact cannot take
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.skipped is not None or self.max_diff <= self.tolerance)

    def cell(self) -> str:
        if self.error:
            return "ERROR"
        if self.skipped:
            return "n/a"
        return f"{self.max_diff:.2e}" + ("" if self.ok else " FAIL")

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_diff, "tolerance": self.tolerance, "skipped": self.skipped,
                "error": self.error, "ok": self.ok}


def runtime_names() -> list[str]:
    return common.format_names()


def parse_runtimes(text: str | None) -> list[str]:
    """``"onnx,torch-export"`` -> names, each a known export format (ValueError otherwise)."""
    if not text:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in runtime_names()]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {', '.join(runtime_names())}")
    return names


# Training targets: the eager model takes them, an artifact computes no loss.
LABEL_INPUTS = ("labels", "start_positions", "end_positions")


def artifact_inputs(case: Case, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
    """The case's inputs under the artifact's names, or why an artifact cannot run the case."""
    arch = case.architecture
    if arch not in common.EXPORTABLE_ARCHITECTURES:
        return f"{arch} is not exported"
    if case.call_kwargs.get("interpolate_pos_encoding"):
        return "artifacts take the config's image size"
    extra = sorted(k for k in inputs if k not in common.input_names(case.config, arch) and k not in LABEL_INPUTS)
    if extra:
        return f"artifacts do not take {', '.join(extra)}"
    out = {}
    for name in common.input_names(case.config, arch):
        if name in inputs:
            out[name] = inputs[name]
        elif name == "attention_mask":  # a case without a mask keeps every position
            out[name] = np.ones(next(iter(inputs.values())).shape, dtype=np.int64)
        else:
            out[name] = np.zeros_like(inputs["input_ids"])
    return out


def check_runtime(name: str, case: Case, arrays: dict, inputs: dict[str, np.ndarray]) -> RuntimeResult:
    """Export the case's model in format ``name``, run it, compare with the eager model."""
    result = RuntimeResult(name)
    usable = artifact_inputs(case, inputs)
    if isinstance(usable, str):
        result.skipped = usable
        return result
    try:
        fmt = common.get_export_format(name)
        framework = common.get_framework(fmt.framework)
        model = MODEL_BUILDERS[fmt.framework](case, arrays)
        sample = common.sample_inputs(case.config, case.architecture)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            artifact = fmt.export(model, tmp, sample, common.ExportOptions())
            got = fmt.run(artifact, usable)
        expected = framework.run_eager(model, usable, case.architecture, case.config)
        diffs = common.max_abs_diffs(expected, got)
        result.max_diff, result.tolerance = max(diffs.values()), fmt.tolerance
    except Exception as e:  # noqa: BLE001 - a failing runtime is a FAIL cell, not a crash
        result.error = f"{type(e).__name__}: {e}"
    return result
