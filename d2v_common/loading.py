"""Match a checkpoint's arrays to a weight spec, with a strict report.

Both model packages and the converter go through ``match_checkpoint``:

* a base-model checkpoint loads into a head model (the base prefix is added) and a head
  checkpoint into a base model (the prefix is stripped, head tensors dropped and listed);
* head tensors (and the optional pooler / mask embedding) missing from the checkpoint are
  newly initialised and listed in a warning;
* a missing backbone tensor or any shape mismatch raises ``ValueError`` naming it, unless
  ``ignore_mismatched_sizes=True`` (then the tensor is re-initialised and listed).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from d2v_common.spec.core import WeightSpec

# Backbone parts a checkpoint may lack without being broken: HF adds them on demand.
OPTIONAL_BACKBONE_MODULES = ("pooler", "masked_spec_embed")


@dataclass
class LoadReport:
    architecture: str
    source: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"load report for {self.architecture}" + (f" from {self.source}" if self.source else "")]
        if self.clean:
            lines.append("  all tensors matched")
        for title, items in (
            ("missing (newly initialized)", self.missing),
            ("unexpected (not used)", self.unexpected),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        if self.mismatched:
            lines.append(
                f"  shape mismatched ({len(self.mismatched)}): "
                + ", ".join(f"{n} checkpoint {a} vs model {b}" for n, a, b in self.mismatched)
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "source": self.source,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[n, list(a), list(b)] for n, a, b in self.mismatched],
            "newly_initialized": self.newly_initialized,
        }


def is_optional(spec: WeightSpec, name: str) -> bool:
    """May ``name`` be absent from a checkpoint (and be freshly initialised)?"""
    if name not in spec.backbone_names():
        return True  # a head tensor
    parts = name.split(".")
    return any(m in parts for m in OPTIONAL_BACKBONE_MODULES)


def _rename_for(spec: WeightSpec, names: list[str]) -> dict[str, str | None]:
    """Checkpoint name -> spec name (None: not used), handling the base prefix both ways."""
    prefix = spec.base_prefix + "."
    has_prefix = any(n.startswith(prefix) for n in names)
    out: dict[str, str | None] = {}
    for n in names:
        if spec.is_base_model:
            if has_prefix:
                out[n] = n[len(prefix):] if n.startswith(prefix) else None
            else:
                out[n] = n
        else:
            if has_prefix or n in spec:
                out[n] = n
            else:
                out[n] = prefix + n
    return out


def match_checkpoint(
    arrays: dict[str, np.ndarray],
    spec: WeightSpec,
    *,
    ignore_mismatched_sizes: bool = False,
    check_finite: bool = False,
    extra_unexpected: list[str] | None = None,
    source: str = "",
    warn: bool = True,
) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Map checkpoint arrays onto ``spec``; returns (arrays by spec name, report).

    Tensors listed in ``report.newly_initialized`` are absent from the result: the caller
    initialises them (``spec.init_arrays``).
    """
    report = LoadReport(spec.architecture, source)
    report.unexpected.extend(extra_unexpected or [])
    matched: dict[str, np.ndarray] = {}
    for ckpt_name, target in _rename_for(spec, list(arrays)).items():
        if target is None or target not in spec:
            report.unexpected.append(ckpt_name)
            continue
        matched[target] = arrays[ckpt_name]
    spec.tie(matched)

    bad_shapes = []
    for p in spec:
        if p.name not in matched:
            continue
        array = matched[p.name]
        if tuple(array.shape) != p.shape:
            bad_shapes.append((p.name, tuple(array.shape), p.shape))
            del matched[p.name]
            continue
        if array.dtype != np.dtype(p.dtype):
            if np.dtype(p.dtype).kind == "f" and array.dtype.kind not in "fiu":
                raise ValueError(f"{p.name}: checkpoint dtype {array.dtype} cannot become {p.dtype}")
            matched[p.name] = array.astype(p.dtype)
        if check_finite and np.dtype(p.dtype).kind == "f":
            matched[p.name] = np.asarray(matched[p.name])  # read it (lazy tensors) to look
            if not np.isfinite(matched[p.name]).all():
                raise ValueError(f"{p.name}: checkpoint tensor holds NaN or Inf values")
    if bad_shapes and not ignore_mismatched_sizes:
        name, got, want = bad_shapes[0]
        raise ValueError(
            f"{name}: checkpoint has shape {got} but the model expects {want}"
            + (f" (and {len(bad_shapes) - 1} more mismatches)" if len(bad_shapes) > 1 else "")
            + "; pass ignore_mismatched_sizes=True to re-initialise such tensors"
        )
    report.mismatched = bad_shapes

    missing = [p.name for p in spec.stored() if p.name not in matched]
    required = [n for n in missing if not is_optional(spec, n) and n not in {m[0] for m in bad_shapes}]
    if required:
        raise ValueError(
            f"checkpoint lacks {len(required)} backbone tensor(s) of {spec.architecture}: "
            + ", ".join(required[:8])
            + (" ..." if len(required) > 8 else "")
        )
    mismatched_names = {m[0] for m in bad_shapes}
    report.missing = [n for n in missing if n not in mismatched_names]
    report.newly_initialized = missing  # absent ones plus re-initialised mismatches
    if warn and report.newly_initialized:
        warnings.warn(
            f"{spec.architecture}: {len(report.newly_initialized)} tensor(s) not in the checkpoint were newly "
            f"initialized (train the model before use): {', '.join(report.newly_initialized)}",
            stacklevel=3,
        )
    if warn and report.unexpected:
        warnings.warn(
            f"{spec.architecture}: {len(report.unexpected)} checkpoint tensor(s) were not used: "
            f"{', '.join(report.unexpected[:20])}" + (" ..." if len(report.unexpected) > 20 else ""),
            stacklevel=3,
        )
    return matched, report


def complete_arrays(
    matched: dict[str, np.ndarray], spec: WeightSpec, report: LoadReport, seed: int | None = None
) -> dict[str, np.ndarray]:
    """``matched`` plus fresh values for the newly initialised / mismatched tensors."""
    out = dict(matched)
    out.update(spec.init_arrays(seed, names=report.newly_initialized))
    return spec.tie(out)
