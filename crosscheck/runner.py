"""Run one case in each framework from one weight set, compare, and check round trips.

The CLI table (``python -m crosscheck``) and the test suite both call ``check_case``, so they
cannot disagree.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from crosscheck.cases.base import Case
from crosscheck.models import build_keras_model, build_torch_model
from d2v_common.spec import weight_spec


# ------------------------------------------------------------------------------ frameworks
def to_numpy_outputs(out) -> dict:
    """A model output -> {field: array or list of arrays} (None fields dropped)."""

    def conv(v):
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if hasattr(v, "detach"):
            return v.detach().float().cpu().numpy()
        return np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)

    return {k: conv(v) for k, v in out.items() if v is not None and k != "past_key_values"}


def torch_inputs(inputs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in inputs.items()}


def run_torch(case: Case, arrays: dict, inputs: dict, model=None) -> dict:
    import torch

    model = model or build_torch_model(case, arrays)
    with torch.no_grad():
        out = model(**torch_inputs(inputs), **case.call_kwargs, return_dict=True)
    return to_numpy_outputs(out)


def run_tf(case: Case, arrays: dict, inputs: dict, model=None) -> dict:
    model = model or build_keras_model(case, arrays)
    out = model(**inputs, **case.call_kwargs, return_dict=True, training=False)
    return to_numpy_outputs(out)


def oracle():
    """The test oracle (``tests/oracle.py``: transformers with known weights). It lives with the
    tests and needs the ``test`` extra; d2v itself never imports transformers."""
    try:
        return importlib.import_module("tests.oracle")
    except ImportError as e:
        raise RuntimeError(
            "comparing with transformers needs a source checkout (tests/oracle.py) and the test extra: "
            f"pip install -e '.[all,test]' ({e})"
        ) from e


def hf_model(case: Case, arrays: dict):
    """transformers' PyTorch class with the same weights (the test oracle)."""
    eager = bool(case.call_kwargs.get("output_attentions"))
    return oracle().hf_torch_model(case.config, case.architecture, arrays, eager_attention=eager)


def run_hf(case: Case, arrays: dict, inputs: dict) -> dict:
    import torch

    model = hf_model(case, arrays)
    with torch.no_grad():
        out = model(**torch_inputs(inputs), **case.call_kwargs, return_dict=True)
    return to_numpy_outputs(out)


# ------------------------------------------------------------------------------ comparison
def max_abs_diff(a: dict, b: dict) -> dict[str, float]:
    """Per-field max |a - b|; a field present on one side only is an error."""
    if set(a) != set(b):
        raise AssertionError(f"output fields differ: {sorted(a)} vs {sorted(b)}")
    out = {}
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, list):
            if len(x) != len(y):
                raise AssertionError(f"{key}: {len(x)} vs {len(y)} entries")
            out[key] = max((_diff(u, v, key) for u, v in zip(x, y)), default=0.0)
        else:
            out[key] = _diff(x, y, key)
    return out


def _diff(x: np.ndarray, y: np.ndarray, key: str) -> float:
    x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
    if x.shape != y.shape:
        raise AssertionError(f"{key}: shapes {x.shape} vs {y.shape}")
    if x.size == 0:
        return 0.0
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    both_nan = np.isnan(x) & np.isnan(y) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    d[both_nan] = 0.0
    return float(np.nanmax(d)) if not np.isnan(d).any() else float("inf")


def within(diffs: dict[str, float], case: Case) -> bool:
    return all(d <= case.tolerance_for(k) for k, d in diffs.items())


# ----------------------------------------------------------------------------- round trips
def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a
    )


def round_trips(case: Case, arrays: dict, torch_model=None, tf_model=None) -> dict[str, bool]:
    """Bit-exact weight round trips: PT -> TF -> PT, and PT -> tf_model.h5 -> PT."""
    import d2v_tf
    import d2v_torch

    pt_cls = d2v_torch.model_class(case.architecture)
    tf_cls = d2v_tf.model_class(case.architecture)
    torch_model = torch_model or build_torch_model(case, arrays)
    expected = torch_model.state_arrays()
    out = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        a, b, c = (os.path.join(tmp, n) for n in "abc")
        torch_model.save_pretrained(a)
        tf_back = tf_cls.from_pretrained(a)
        tf_back.save_pretrained(b)
        out["pt>tf>pt"] = _equal(pt_cls.from_pretrained(b).state_arrays(), expected)
        torch_model.save_pretrained(c, tf_h5=True)
        out["pt>h5>pt"] = _equal(pt_cls.from_pretrained(c, checkpoint_format="tf-h5").state_arrays(), expected)
    return out


# ------------------------------------------------------------------------------------ rows
@dataclass
class Row:
    case: str
    architecture: str
    outputs: list[str]
    max_diff: float
    diffs: dict[str, float]
    tolerance: float
    round_trip: dict[str, bool] = field(default_factory=dict)
    reference_diff: float | None = None
    reference_ok: bool | None = None
    seconds: float = 0.0
    error: str | None = None
    # --runtimes: one crosscheck.runtimes.RuntimeResult per exported-artifact runtime
    runtimes: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.max_diff <= self.tolerance
            and all(self.round_trip.values())
            and self.reference_ok is not False
            and all(r.ok for r in self.runtimes.values())
        )

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "architecture": self.architecture,
            "outputs": self.outputs,
            "max_abs_diff": self.max_diff,
            "diffs": self.diffs,
            "tolerance": self.tolerance,
            "round_trip": self.round_trip,
            "reference_max_abs_diff": self.reference_diff,
            "reference_ok": self.reference_ok,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "runtimes": {name: r.to_dict() for name, r in self.runtimes.items()},
            "status": "ok" if self.ok else "FAIL",
        }


def check_case(case: Case, seed: int = 0, reference: str | None = None, with_round_trips: bool = True,
               runtimes: tuple[str, ...] = ()) -> Row:
    """Build both frameworks from one seeded weight set, run the same inputs, compare; with
    ``runtimes`` (export format names), also export the case and run it in each runtime."""
    start = time.perf_counter()
    arrays = weight_spec(case.config, case.architecture).random_arrays(seed)
    inputs = case.make_inputs(np.random.default_rng(seed + 1))
    row = Row(case.name, case.architecture, [], float("nan"), {}, case.tolerance)
    try:
        torch_model = build_torch_model(case, arrays)
        pt = run_torch(case, arrays, inputs, torch_model)
        tf = run_tf(case, arrays, inputs)
        diffs = max_abs_diff(pt, tf)
        row.outputs = sorted(diffs)
        row.diffs = diffs
        # Normalise by each field's tolerance so one number tells pass / fail.
        worst = max(diffs, key=lambda k: diffs[k] / case.tolerance_for(k))
        row.max_diff, row.tolerance = diffs[worst], case.tolerance_for(worst)
        if with_round_trips:
            row.round_trip = round_trips(case, arrays, torch_model)
        if reference == "hf" and case.hf_torch:
            ref = max_abs_diff(run_hf(case, arrays, inputs), pt)
            row.reference_diff = max(ref.values())
            row.reference_ok = within(ref, case)
        if runtimes:
            from crosscheck.runtimes import check_runtime

            row.runtimes = {name: check_runtime(name, case, arrays, inputs) for name in runtimes}
    except Exception as e:  # noqa: BLE001 - a failing case is a FAIL row, not a crash
        row.error = f"{type(e).__name__}: {e}"
    row.seconds = time.perf_counter() - start
    return row
