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

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from d2v_common.spec import layouts
from d2v_common.spec import FAMILIES, family_of, weight_spec
from d2v_common.spec.core import ParamSpec, WeightSpec

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
    # Why matching stopped (a missing backbone tensor ...): a report with errors is never clean.
    errors: list[str] = field(default_factory=list)
    # What converting the source noted (a fairseq checkpoint's options d2v does not apply).
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every tensor came from the checkpoint and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched or self.errors)

    def __str__(self) -> str:
        lines = [f"load report for {self.architecture}" + (f" from {self.source}" if self.source else "")]
        if self.clean:
            lines.append("  all tensors matched")
        lines += [f"  error: {e}" for e in self.errors]
        for title, items in (
            ("missing (newly initialized)", self.missing),
            ("unexpected (not used)", self.unexpected),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        if self.mismatched:
            lines.append(
                f"  shape mismatched (newly initialized) ({len(self.mismatched)}): "
                + ", ".join(f"{n} checkpoint {a} vs model {b}" for n, a, b in self.mismatched)
            )
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "source": self.source,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[n, list(a), list(b)] for n, a, b in self.mismatched],
            "newly_initialized": self.newly_initialized,
            "errors": self.errors,
            "notes": self.notes,
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


def _mismatch_message(bad: list, *, where: str = "", detail: str = "", advice: str) -> str:
    """One message for shape mismatches ``[(name, got, want), ...]``: the first named, the rest counted."""
    name, got, want = bad[0]
    more = f" (and {len(bad) - 1} more mismatches)" if len(bad) > 1 else ""
    return f"{name}: checkpoint{where} has shape {got} but the model expects {want}{detail}{more}{advice}"


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

    ``extra_unexpected``: tf_model.h5 names of datasets that no spec entry claims.

    Tensors listed in ``report.newly_initialized`` are absent from the result: the caller
    initialises them (``spec.init_arrays``).
    """
    report = LoadReport(spec.architecture, source)
    # tf_model.h5 names no spec entry claims: shown by their canonical name, the file's in brackets
    report.unexpected.extend(f"{layouts.canonical_name_of_h5(n)} (tf_model.h5: {n})" for n in extra_unexpected or [])
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
        raise ValueError(_mismatch_message(bad_shapes, advice="; pass ignore_mismatched_sizes=True to re-initialise such tensors"))
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


# ------------------------------------------------------------------ config vs checkpoint header
class ConfigCheckpointMismatch(ValueError):
    """``config.json`` asks for tensors its checkpoint does not hold (too many encoder layers,
    missing backbone tensors or other shapes). Found from the checkpoint's header and a
    one-layer spec, before any model or full weight spec is built, so a hostile or mistaken
    config fails at once instead of allocating what it describes."""


def _layer_probe(config) -> tuple[WeightSpec, WeightSpec, str, str]:
    """``(one-layer base spec, two-layer base spec, a layer-0 tensor, its layer-1 twin)``.

    Each layer holds the same tensors and nearly everything outside the layers is the same for
    every depth, so one layer tells the shapes and two tell where the layer index sits (and
    which tensors outside the layers grow with the depth).
    """
    base = FAMILIES[family_of(config)].ARCHITECTURES[0]
    one = weight_spec(config.copy(num_hidden_layers=1), base)
    two = weight_spec(config.copy(num_hidden_layers=2), base)
    first_new = next(i for i, p in enumerate(two) if p.name not in one)
    per_layer = len(two) - len(one)
    return one, two, two.params[first_new - per_layer].name, two.params[first_new].name


def _file_name(p: ParamSpec, spec: WeightSpec, h5: bool) -> str:
    return layouts.h5_name(p, spec) if h5 else p.name


def check_config_fits(
    config,
    fmt: str,
    shapes: dict[str, tuple[int, ...]],
    *,
    ignore_mismatched_sizes: bool = False,
    source: str = "",
) -> None:
    """Raise ``ConfigCheckpointMismatch`` unless ``config`` fits the checkpoint header ``shapes``.

    Args:
        config: the model's config (its family picks the weight spec).
        fmt: the checkpoint format ("safetensors", "pt-bin" or "tf-h5"); tf-h5 names and
            shapes are HF's h5 ones.
        shapes: ``{name in the file: shape}``, as ``checkpoint.read_shapes`` gives them.
        ignore_mismatched_sizes: let shape mismatches through (they are re-initialised later);
            missing tensors and missing layers still raise.
        source: where the checkpoint lies, for the message.

    First the count: the config's ``num_hidden_layers`` against the encoder layers the file
    holds (more layers in the file are fine: they go unused, as in HF). Then the shapes and
    presence of the backbone tensors of one layer and of everything outside the layers.
    """
    h5 = fmt == "tf-h5"
    name = type(config).__name__
    where = f" at {source}" if source else ""
    probe, two, layer0, layer1 = _layer_probe(config)
    # The layer index sits where the file names of a layer-0 tensor and its layer-1 twin differ.
    prefix = os.path.commonprefix([_file_name(two[layer0], two, h5), _file_name(two[layer1], two, h5)])

    prefix_dot = probe.base_prefix + "."
    if not h5 and any(n.startswith(prefix_dot) for n in shapes):  # a head checkpoint: its backbone part
        shapes = {n[len(prefix_dot):]: s for n, s in shapes.items() if n.startswith(prefix_dot)}
    layers = set()
    for n in shapes:
        if n.startswith(prefix):
            digits = n[len(prefix):].split(".")[0].split("/")[0]
            if digits.isdigit():
                layers.add(int(digits))
    held = len(layers)
    if config.num_hidden_layers > held:
        raise ConfigCheckpointMismatch(
            f"{name}.num_hidden_layers = {config.num_hidden_layers} but the checkpoint{where} holds {held} encoder "
            f"layer(s) ({prefix}N...): the backbone tensors of the other layers are missing; config.json does not "
            "fit these weights"
        )

    # a tensor outside the layers whose shape follows the depth (data2vec 2.0's ALiBi scales)
    # is left to the full match, which checks it once the depth is known to fit
    depth_dependent = {p.name for p in probe if p.name in two and two[p.name].shape != p.shape}
    missing, bad = [], []
    for p in probe.stored():
        file_name = _file_name(p, probe, h5)
        if file_name not in shapes:
            if not any(m in p.name.split(".") for m in OPTIONAL_BACKBONE_MODULES):
                missing.append(p.name)
            continue
        if p.name in depth_dependent:
            continue
        got = tuple(shapes[file_name])
        want = layouts.keras_shape(p) if h5 else p.shape
        if got != want:
            perm = layouts.leaf_rule(p).inverse_perm if h5 else None
            canonical = tuple(got[i] for i in perm) if perm is not None and len(perm) == len(got) else got
            bad.append((p.name, canonical, p.shape))
    if missing:
        raise ConfigCheckpointMismatch(
            f"checkpoint{where} lacks {len(missing)} backbone tensor(s) that {name} implies: "
            + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            + "; config.json does not fit these weights"
        )
    if bad and not ignore_mismatched_sizes:
        raise ConfigCheckpointMismatch(_mismatch_message(
            bad, where=where, detail=f" (from {name})",
            advice="; config.json does not fit these weights (pass ignore_mismatched_sizes=True to re-initialise such tensors)",
        ))
