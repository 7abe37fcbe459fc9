"""PyTorch serving artifacts: ONNX (``model.onnx``) and ``torch.export`` (``model.pt2``).

    python -m d2v_torch.export SRC DST --format {onnx,torch-export} [--architecture NAME]
                               [--opset N] [--dtype {float32,bfloat16}] [--batch-size B]
                               [--length L] [--overwrite] [--quiet]

Both formats trace the same serving module: HF's input names as its arguments (``input_ids``,
``attention_mask`` [, ``token_type_ids``]; ``input_values``, ``attention_mask``;
``pixel_values``), HF's output field names as its outputs, a dynamic batch axis and a dynamic
sequence / audio length (vision: the config's image size). ``model.pt2`` returns a dict of the
outputs; ``model.onnx`` names its outputs the same way. Neither needs d2v to run:

    >>> import onnxruntime  # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession("DST/model.onnx")  # doctest: +SKIP
    >>> logits, = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})  # doctest: +SKIP
    >>> program = torch.export.load("DST/model.pt2")  # doctest: +SKIP
    >>> program.module()(input_ids=ids, attention_mask=mask)["logits"]  # doctest: +SKIP

The registry, the CLI, staging and validation live in ``d2v_common.export``; this module adds
the two PyTorch formats and the PyTorch loader.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

import d2v_torch
from d2v_common import export as common
from d2v_common.export import ExportFormat, ExportOptions

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MAX_BATCH = 4096


# ------------------------------------------------------------------------------ the serving module
class _ServingBase(nn.Module):
    """Wraps a d2v model: named tensor arguments in, the exported output fields out."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], fields: tuple[str, ...],
                 call_kwargs: dict[str, Any], as_dict: bool):
        super().__init__()
        self.model = model
        self.names, self.fields, self.call_kwargs, self.as_dict = names, fields, call_kwargs, as_dict
        self.compute_dtype = next(model.parameters()).dtype

    def _run(self, args: tuple):
        inputs = {n: (a.to(self.compute_dtype) if a.is_floating_point() else a) for n, a in zip(self.names, args)}
        out = self.model(**inputs, **self.call_kwargs)
        values = [out[f].float() for f in self.fields]  # bf16 artifacts still return float32
        return dict(zip(self.fields, values)) if self.as_dict else tuple(values)


_SERVING_CLASSES: dict[tuple[str, ...], type] = {}


def _serving_class(names: tuple[str, ...]) -> type:
    """A subclass whose ``forward`` has exactly HF's argument names, so exported programs and
    ONNX graphs take them by name (the names come from ``d2v_common.export.input_names``)."""
    if names not in _SERVING_CLASSES:
        if not all(n.isidentifier() for n in names):
            raise ValueError(f"input names must be identifiers: {names}")
        params = ", ".join(names)
        namespace: dict[str, Any] = {}
        exec(f"def forward(self, {params}):\n    return self._run(({params},))\n", namespace)  # noqa: S102
        _SERVING_CLASSES[names] = type("Data2VecServing", (_ServingBase,), {"forward": namespace["forward"]})
    return _SERVING_CLASSES[names]


def present_fields(model: nn.Module, sample: dict[str, np.ndarray]) -> tuple[str, ...]:
    """The exported fields this model produces (a base model without pooler has no pooler_output)."""
    return tuple(run_eager(model, sample, model.architecture, model.config))


def serving_module(model: nn.Module, sample: dict[str, np.ndarray], as_dict: bool) -> nn.Module:
    """The module both formats trace (eval mode; ``sample`` only decides which fields exist).

    Args:
        model: a d2v PyTorch model of one of ``d2v_common.export.EXPORTABLE_ARCHITECTURES``.
        sample: inputs with HF's names (numpy), as from ``d2v_common.export.sample_inputs``.
        as_dict: return ``{field: tensor}`` (pt2) instead of a tuple (ONNX).

    Returns:
        An ``nn.Module`` taking HF's input names as arguments.
    """
    architecture = model.architecture
    common.check_architecture(architecture)
    names = common.input_names(model.config, architecture)
    fields = present_fields(model, sample)
    kwargs = common.eager_call_kwargs(model.config, architecture)
    return _serving_class(names)(model.eval(), names, fields, kwargs, as_dict).eval()


def to_tensors(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in inputs.items()}


def dynamic_shapes(config, architecture: str) -> dict[str, dict[int, torch.export.Dim]]:
    """``torch.export`` Dims from the shared axis table (one Dim object per axis name, so the
    inputs share their batch and length)."""
    lengths = common.length_range(config, architecture)
    dims: dict[str, torch.export.Dim] = {}
    out = {}
    for name, axes in common.dynamic_axes(config, architecture).items():
        spec = {}
        for axis, axis_name in axes.items():
            if axis_name not in dims:
                low, high = (1, MAX_BATCH) if axis_name in ("batch", "choices") else lengths
                dims[axis_name] = torch.export.Dim(axis_name, min=low, max=high)
            spec[axis] = dims[axis_name]
        out[name] = spec
    return out


def export_program(model: nn.Module, sample: dict[str, np.ndarray], as_dict: bool = True):
    """``torch.export.export`` of the serving module with dynamic batch and length."""
    module = serving_module(model, sample, as_dict)
    tensors = to_tensors(sample)
    kwargs = {n: tensors[n] for n in module.names}  # by name: the program is called by HF's names
    shapes = dynamic_shapes(model.config, model.architecture)
    program = _export(module, kwargs, shapes)
    # A program keeps each parameter's requires_grad (it shares them with ``model``): frozen
    # copies make a loaded ``model.pt2`` give plain outputs (``.numpy()`` without ``.detach()``).
    for name, value in program.state_dict.items():
        if isinstance(value, nn.Parameter) and value.requires_grad:
            program.state_dict[name] = nn.Parameter(value.detach(), requires_grad=False)
    return program


def _export(module: nn.Module, kwargs: dict[str, torch.Tensor], shapes: dict):
    with torch.no_grad():
        try:
            return torch.export.export(module, (), kwargs, dynamic_shapes=shapes, strict=False)
        except torch._dynamo.exc.UserError as e:
            if "Constraints violated" not in str(e):
                raise
            # torch's range analysis cannot prove some frame-count guards over the declared range
            # (after the audio adapter's strided convs: ``Mod(1, frames) != 0``, true for every
            # length we allow). Dim.DYNAMIC lets export infer the range and keep such guards.
            auto = {name: {axis: torch.export.Dim.DYNAMIC for axis in spec} for name, spec in shapes.items()}
            return torch.export.export(module, (), kwargs, dynamic_shapes=auto, strict=False)


# ------------------------------------------------------------------------------ the two formats
def _export_pt2(model, staging_dir: str, sample: dict[str, np.ndarray], options: ExportOptions) -> str:
    path = os.path.join(staging_dir, TORCH_EXPORT.artifact)
    torch.export.save(export_program(model, sample, as_dict=True), path)
    return path


def _run_pt2(path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    program = torch.export.load(path).module()
    with torch.no_grad():
        out = program(**to_tensors(inputs))
    return {k: v.detach().float().numpy() for k, v in out.items()}


def _export_onnx(model, staging_dir: str, sample: dict[str, np.ndarray], options: ExportOptions) -> str:
    path = os.path.join(staging_dir, ONNX.artifact)
    write_onnx(export_program(model, sample, as_dict=True), path, options.opset)
    return path


def write_onnx(program, path: str, opset: int | None = None) -> None:
    """Translate an exported serving program (``export_program``, dict outputs) to ``path``:
    inputs and outputs keep HF's names; one file unless the weights pass ONNX's 2 GB limit."""
    output_names = list(program.call_spec.out_spec.context)  # the dict's keys, in order
    weight_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, output_names=output_names,
                                         verbose=False)
        onnx_program.save(path, external_data=weight_bytes > 1_800_000_000)


def _run_onnx(path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime_session(path)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(outputs, {n: inputs[n] for n in names})
    return dict(zip(outputs, values))


def onnxruntime_session(path: str, threads: int | None = None):
    """A CPU ``onnxruntime.InferenceSession`` (all graph optimisations on)."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ framework hooks
def load_model(src: str, architecture: str, options: ExportOptions):
    """``from_pretrained`` of the d2v class, in the export dtype, eval mode."""
    cls = getattr(d2v_torch, architecture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(src, torch_dtype=_TORCH_DTYPES[options.resolved_dtype]).eval()


def run_eager(model, inputs: dict[str, np.ndarray], architecture: str, config) -> dict[str, np.ndarray]:
    """The eager model's exported fields (float32 numpy), inputs cast like the serving module."""
    dtype = next(model.parameters()).dtype
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in to_tensors(inputs).items()}
    with torch.no_grad():
        out = model(**tensors, **common.eager_call_kwargs(config, architecture))
    return {f: out[f].detach().float().numpy() for f in common.output_fields(architecture) if out.get(f) is not None}


ONNX = common.register_export_format(ExportFormat(
    name="onnx", framework="torch", artifact="model.onnx", tolerance=1e-4, options=frozenset({"opset"}),
    export=_export_onnx, run=_run_onnx, dtypes=("float32",),
    description="ONNX graph (torch.onnx dynamo exporter), runs in onnxruntime",
))
TORCH_EXPORT = common.register_export_format(ExportFormat(
    name="torch-export", framework="torch", artifact="model.pt2", tolerance=1e-4, options=frozenset({"dtype"}),
    export=_export_pt2, run=_run_pt2, dtypes=("float32", "bfloat16"),
    description="torch.export program (torch.export.load; ExecuTorch / AOTInductor input)",
))
common.register_framework("torch", load_model, run_eager)


def main(argv: list[str] | None = None) -> int:
    """``python -m d2v_torch.export``: the shared CLI, restricted to the PyTorch formats."""
    return common.main(argv, framework="torch")


if __name__ == "__main__":
    from d2v_common.io_utils import run_as_script

    run_as_script("d2v_torch.export")  # the canonical module, not this __main__ copy (see run_as_script)
