"""Serving artifacts (ONNX, ``torch.export``, SavedModel, LiteRT): one registry, one CLI.

    d2v-export SRC DST --format {onnx,torch-export,saved-model,litert} [--architecture NAME]
               [--opset N] [--dtype {float32,bfloat16}] [--batch-size B] [--length L]
               [--from fairseq [--dict DICT] [--head NAME]] [--overwrite] [--quiet]

``python -m d2v_torch.export`` and ``python -m d2v_tf.export`` run the same CLI restricted to
their framework's formats.

Interface (stable; the PyTorch and Keras export modules build on it)
--------------------------------------------------------------------
* ``register_framework(name, load_model, run_eager)``: a framework package says how to load a
  checkpoint folder (``load_model(src, architecture, options) -> model``) and how to run the
  eager model on numpy inputs (``run_eager(model, inputs, architecture, config) -> {field:
  array}``, exported fields only).
* ``register_export_format(ExportFormat(...))``: one entry per artifact kind, with its
  ``export(model, staging_dir, sample_inputs, options) -> artifact path`` (writes
  ``staging_dir/<artifact>``, a file or a folder; ``sample_inputs`` are numpy arrays under
  HF's names at the trace shape; ``options`` an ``ExportOptions``) and its
  ``run(artifact_path, inputs) -> {field: array}`` (the artifact in its own runtime, no d2v
  needed by the artifact itself; float32 outputs under ``output_fields`` names). Validation
  compares ``run`` with ``run_eager`` at ``validation_shape`` within ``tolerance`` (float32)
  or ``reduced_precision_tolerance``.
* ``crosscheck/runtimes.py`` turns every registered format into a ``--runtimes`` column of
  ``python -m crosscheck`` with no further code.
* ``FORMAT_FRAMEWORKS`` / ``FRAMEWORK_MODULES``: which package registers a format; the CLI and
  ``get_export_format`` import it lazily, so ``d2v_common`` itself imports no framework.
* ``input_names`` / ``output_fields`` / ``dynamic_axes``: HF's names per architecture, shared
  by every format. ``sample_inputs(config, architecture, batch, length)`` builds inputs.
* ``export_checkpoint(src, dst, format, options)``: load, export into a staging folder beside
  DST, copy ``config.json`` and the preprocessing files, validate at a second shape, then
  rename into place (all or nothing; ``overwrite`` is needed for an existing DST).
* ``validate(...)`` prints the max abs difference per output and raises
  ``ExportValidationError`` above the format's tolerance.

Exit codes of the CLI: 0 done, 1 the artifact disagrees with the eager model (nothing written),
2 usage or IO error (nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2v_common.configs import CONFIG_NAME, Data2VecConfigBase
from d2v_common.convert import ConversionError, companion_files, hub_companions, resolve_architecture
from d2v_common.io_utils import (
    EXIT_ERROR, EXIT_MISMATCH, EXIT_OK, copy_file, fresh_sibling, fsync_dir, install, run_as_script, same_or_nested,
    written_summary,
)
from d2v_common.loader.pretrained import OpenRequest, load_pretrained, open_checkpoint
from d2v_common.models.registry import EXPORTABLE_ARCHITECTURES
from d2v_common.spec import ARCHITECTURES, family_of


# Which framework registers each format, and which module does it (imported lazily).
FORMAT_FRAMEWORKS = {"onnx": "torch", "torch-export": "torch", "saved-model": "keras", "litert": "keras"}
FRAMEWORK_MODULES = {"torch": "d2v_torch.export", "keras": "d2v_tf.export"}
DTYPES = ("float32", "bfloat16")


class ExportError(Exception):
    """The export could not run (bad arguments, unreadable SRC, exporter failure): exit 2."""


class ExportValidationError(ExportError):
    """The artifact's outputs differ from the eager model's beyond the tolerance: exit 1."""

    def __init__(self, message: str, diffs: dict[str, float]):
        super().__init__(message)
        self.diffs = diffs


# ------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class ExportOptions:
    """What the caller chose. ``None`` means the default (and is always allowed).

    Args:
        architecture: HF class name; default: ``config.json``'s ``architectures[0]``.
        opset: ONNX opset version (formats that honour ``"opset"`` only).
        dtype: ``"float32"`` (default) or ``"bfloat16"`` (formats that honour ``"dtype"``).
        batch_size: sample batch size used to trace the model (default 2).
        length: sample sequence length (tokens) or audio length (samples); not for vision.
        validate: run the artifact against the eager model at a second shape (default True).
    """

    architecture: str | None = None
    opset: int | None = None
    dtype: str | None = None
    batch_size: int | None = None
    length: int | None = None
    validate: bool = True

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or "float32"


# Option -> what it means, for the "cannot honour" error.
_OPTION_FLAGS = {"opset": "--opset", "dtype": "--dtype"}


# ------------------------------------------------------------------------------ registries
@dataclass(frozen=True)
class ExportFormat:
    """One artifact kind.

    Args:
        name: the ``--format`` value (``"onnx"``).
        framework: ``"torch"`` or ``"keras"``.
        artifact: file or folder name inside DST (``"model.onnx"``).
        tolerance: max abs difference allowed against the eager model (fp32).
        options: option names (of ``ExportOptions``: ``"opset"``, ``"dtype"``) it honours
            beyond the shared ones; any other non-default option is an error before any work.
        export: ``export(model, staging_dir, sample_inputs, options) -> artifact path``.
        run: ``run(artifact_path, inputs) -> {output field: array}``, in the artifact's runtime.
        dtypes: the ``dtype`` values it accepts.
        reduced_precision_tolerance: the tolerance for non-float32 dtypes (vs the eager model in
            the same dtype).
        description: one line for ``--help``.
    """

    name: str
    framework: str
    artifact: str
    tolerance: float
    options: frozenset[str]
    export: Callable[..., str]
    run: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
    dtypes: tuple[str, ...] = ("float32",)
    reduced_precision_tolerance: float = 5e-2
    description: str = ""

    def tolerance_for(self, dtype: str) -> float:
        return self.tolerance if dtype == "float32" else self.reduced_precision_tolerance


@dataclass(frozen=True)
class Framework:
    """How a framework package loads a checkpoint and runs its eager model (see module doc)."""

    name: str
    load_model: Callable[[str, str, ExportOptions], Any]
    run_eager: Callable[..., dict[str, np.ndarray]]


_FORMATS: dict[str, ExportFormat] = {}
_FRAMEWORKS: dict[str, Framework] = {}


def register_export_format(fmt: ExportFormat) -> ExportFormat:
    """Add (or replace, on module reload) a format. Its name must be in ``FORMAT_FRAMEWORKS``."""
    if FORMAT_FRAMEWORKS.get(fmt.name) != fmt.framework:
        raise ValueError(f"format {fmt.name!r} must be listed in FORMAT_FRAMEWORKS for framework {fmt.framework!r}")
    unknown = set(fmt.options) - set(_OPTION_FLAGS)
    if unknown:
        raise ValueError(f"format {fmt.name!r}: unknown options {sorted(unknown)}")
    _FORMATS[fmt.name] = fmt
    return fmt


def register_framework(name: str, load_model: Callable, run_eager: Callable) -> Framework:
    if name not in FRAMEWORK_MODULES:
        raise ValueError(f"unknown framework {name!r}; known: {', '.join(FRAMEWORK_MODULES)}")
    _FRAMEWORKS[name] = Framework(name, load_model, run_eager)
    return _FRAMEWORKS[name]


def format_names(framework: str | None = None) -> list[str]:
    """Every known format name (registered or not yet imported), optionally of one framework."""
    return [n for n, fw in FORMAT_FRAMEWORKS.items() if framework is None or fw == framework]


def get_export_format(name: str) -> ExportFormat:
    """The registered format, importing its framework's export module on first use."""
    if name not in FORMAT_FRAMEWORKS:
        raise ExportError(f"unknown export format {name!r}; choose one of {', '.join(FORMAT_FRAMEWORKS)}")
    if name not in _FORMATS:
        module = FRAMEWORK_MODULES[FORMAT_FRAMEWORKS[name]]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ExportError(
                f"format {name!r} needs {module} and its dependencies ({e}); pip install 'd2v[export]'"
            ) from e
    if name not in _FORMATS:
        raise ExportError(f"format {name!r} is not available: {FRAMEWORK_MODULES[FORMAT_FRAMEWORKS[name]]} "
                          "did not register it")
    return _FORMATS[name]


def get_framework(name: str) -> Framework:
    if name not in _FRAMEWORKS:
        importlib.import_module(FRAMEWORK_MODULES[name])
    return _FRAMEWORKS[name]


def check_options(fmt: ExportFormat, options: ExportOptions) -> None:
    """Reject an option the format cannot honour (before any work)."""
    for option, flag in _OPTION_FLAGS.items():
        if getattr(options, option) is not None and option not in fmt.options:
            raise ExportError(f"format {fmt.name!r} does not take {flag}; it honours "
                              + (", ".join(_OPTION_FLAGS[o] for o in sorted(fmt.options)) or "no format options"))
    if options.resolved_dtype not in DTYPES:
        raise ExportError(f"unknown dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if options.resolved_dtype not in fmt.dtypes:
        raise ExportError(f"format {fmt.name!r} exports {', '.join(fmt.dtypes)} only, not {options.dtype}")
    if options.opset is not None and not 7 <= options.opset <= 30:
        raise ExportError(f"--opset must be an ONNX opset number (e.g. 18), got {options.opset}")
    for name in ("batch_size", "length"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ExportError(f"{name} must be a positive integer, got {value!r}")


# ------------------------------------------------------------------------------ HF's names
# The output fields an artifact returns, in order (HF's output field names); fields the model
# does not produce (a base model without pooler) are left out at export time.
OUTPUT_FIELDS = {
    "Data2VecTextModel": ("last_hidden_state", "pooler_output"),
    "Data2VecTextForCausalLM": ("logits",),
    "Data2VecTextForMaskedLM": ("logits",),
    "Data2VecTextForSequenceClassification": ("logits",),
    "Data2VecTextForMultipleChoice": ("logits",),
    "Data2VecTextForTokenClassification": ("logits",),
    "Data2VecTextForQuestionAnswering": ("start_logits", "end_logits"),
    "Data2VecAudioModel": ("last_hidden_state", "extract_features"),
    "Data2VecAudioForCTC": ("logits",),
    "Data2VecAudioForSequenceClassification": ("logits",),
    "Data2VecAudioForAudioFrameClassification": ("logits",),
    "Data2VecAudioForXVector": ("logits", "embeddings"),
    "Data2VecVisionModel": ("last_hidden_state", "pooler_output"),
    "Data2VecVisionForImageClassification": ("logits",),
    "Data2VecVisionForSemanticSegmentation": ("logits",),
    # data2vec 2.0 (HF has no such classes; the names follow the 1.0 ones)
    "Data2Vec2VisionModel": ("last_hidden_state",),
    "Data2Vec2VisionForImageClassification": ("logits",),
    "Data2Vec2AudioModel": ("last_hidden_state", "extract_features"),
    "Data2Vec2AudioForCTC": ("logits",),
    "Data2Vec2AudioForSequenceClassification": ("logits",),
    "Data2Vec2TextModel": ("last_hidden_state",),
    "Data2Vec2TextForSequenceClassification": ("logits",),
}
# Which classes export is decided once, in d2v_common.models.registry (EXPORTABLE_FAMILIES, re-exported
# here as EXPORTABLE_ARCHITECTURES); each needs its row above (tests/test_registry.py checks).
DEFAULT_BATCH = 2
DEFAULT_LENGTH = {"text": 16, "audio": 4000}


def family_of_architecture(architecture: str) -> str:
    """The input modality (``text``, ``audio``, ``vision``): data2vec 2.0 families
    (``text2`` ...) take the same inputs under the same names as their 1.0 counterparts."""
    return ARCHITECTURES[architecture].rstrip("2")


def check_architecture(architecture: str) -> None:
    if architecture not in EXPORTABLE_ARCHITECTURES:
        raise ExportError(f"{architecture} cannot be exported; exportable classes: {', '.join(EXPORTABLE_ARCHITECTURES)}")


def input_names(config: Data2VecConfigBase, architecture: str) -> tuple[str, ...]:
    """HF's input names, in the artifact's order. ``token_type_ids`` only where the config has
    more than one token type (data2vec-text checkpoints have one); audio always takes a mask."""
    family = family_of_architecture(architecture)
    if family == "vision":
        return ("pixel_values",)
    if family == "audio":
        return ("input_values", "attention_mask")
    names = ("input_ids", "attention_mask")
    # data2vec 2.0 text has no token types at all
    return names + ("token_type_ids",) if getattr(config, "type_vocab_size", 1) > 1 else names


def output_fields(architecture: str) -> tuple[str, ...]:
    return OUTPUT_FIELDS[architecture]


def dynamic_axes(config: Data2VecConfigBase, architecture: str) -> dict[str, dict[int, str]]:
    """Per input: axis -> name of the axes that may vary (batch, and the length where it can)."""
    family = family_of_architecture(architecture)
    if family == "vision":
        return {"pixel_values": {0: "batch"}}
    if architecture == "Data2VecTextForMultipleChoice":
        axes = {0: "batch", 1: "choices", 2: "sequence"}
    else:
        axes = {0: "batch", 1: "sequence" if family == "text" else "samples"}
    return {name: dict(axes) for name in input_names(config, architecture)}


def length_range(config: Data2VecConfigBase, architecture: str) -> tuple[int, int] | None:
    """(min, max) of the dynamic length axis (None for vision: the image size is fixed)."""
    family = family_of_architecture(architecture)
    if family == "vision":
        return None
    if family == "audio":
        return _min_audio_samples(config, architecture == "Data2VecAudioForXVector"), 2**24
    if ARCHITECTURES[architecture] == "text2":
        # fairseq positions run from pad + 1 to pad + T; without positions only memory limits T
        return 2, config.max_position_embeddings if config.use_position_embeddings else 2**16
    from d2v_common.models.text import max_input_length

    return 2, max_input_length(config)


def _min_audio_samples(config, tdnn: bool) -> int:
    """The fewest samples that leave at least 2 frames after every conv, adapter and (x-vector)
    TDNN stage: a traced size of 1 would be specialised (broadcasting), fixing the length."""
    from d2v_common.models.audio import adapter_conv_length, feature_lengths, min_input_samples

    def stages_ok(samples: int) -> bool:
        frames = feature_lengths(config, samples, add_adapter=False)
        sizes = [frames]
        if tdnn:  # dilated convs without padding
            reach = sum(d * (k - 1) for k, d in zip(config.tdnn_kernel, config.tdnn_dilation))
            sizes.append(frames - reach)
        if config.add_adapter:
            for _ in range(config.num_adapter_layers):
                frames = adapter_conv_length(config, frames)
                sizes.append(frames)
        return min(sizes) >= 2

    samples = min_input_samples(config)
    while not stages_ok(samples):
        samples += 1
    return samples


def eager_call_kwargs(config: Data2VecConfigBase, architecture: str) -> dict[str, Any]:
    """Keyword arguments for the eager call that the artifact bakes in (no cache, no extra outputs)."""
    kwargs: dict[str, Any] = {"output_attentions": False, "output_hidden_states": False, "return_dict": True}
    if family_of_architecture(architecture) == "text" and getattr(config, "is_decoder", False):
        kwargs["use_cache"] = False
    return kwargs


def sample_inputs(
    config: Data2VecConfigBase, architecture: str, batch_size: int | None = None, length: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Inputs with HF's names and dtypes (int64 ids and masks, float32 values) at one shape.

    Args:
        config: the model's config.
        architecture: HF class name.
        batch_size: rows (default 2).
        length: tokens (text) or samples (audio); vision uses the config's image size.
        seed: numpy seed.

    Returns:
        ``{input name: array}``; the last row is partly padded (mask 0) when the batch has
        more than one row, so exported masks are exercised.

    Examples:
        >>> from d2v_common.configs import Data2VecVisionConfig
        >>> sample_inputs(Data2VecVisionConfig(image_size=32, patch_size=8),
        ...               "Data2VecVisionModel")["pixel_values"].shape
        (2, 3, 32, 32)
    """
    check_architecture(architecture)
    family = family_of_architecture(architecture)
    batch = batch_size or DEFAULT_BATCH
    rng = np.random.default_rng(seed)
    if family == "vision":
        if length is not None:
            raise ExportError("vision models take images of the config's image_size; --length is for text and audio")
        # data2vec 2.0 images are square (one int); 1.0 configs may give (height, width)
        h, w = getattr(config, "image_size_hw", (config.image_size, config.image_size))
        return {"pixel_values": rng.standard_normal((batch, config.num_channels, h, w)).astype(np.float32)}
    low, high = length_range(config, architecture)
    n = length or min(DEFAULT_LENGTH[family], high)
    if not low <= n <= high:
        raise ExportError(f"length {n} is outside what {architecture} takes ({low}..{high})")
    lead = (batch, 2) if architecture == "Data2VecTextForMultipleChoice" else (batch,)
    mask = np.ones((*lead, n), dtype=np.int64)
    keep = max(low, (3 * n) // 4)
    if batch > 1 and keep < n:
        mask[-1, ..., keep:] = 0
    if family == "audio":
        values = rng.standard_normal((*lead, n)).astype(np.float32)
        values[mask == 0] = 0.0  # padding is silence, as the feature extractor writes it
        return {"input_values": values, "attention_mask": mask}
    # avoid the special ids (pad, bos, eos) so padding is only where the mask says
    ids = rng.integers(min(3, config.vocab_size - 1), config.vocab_size, size=(*lead, n)).astype(np.int64)
    if config.pad_token_id is not None:
        ids[mask == 0] = config.pad_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names(config, architecture):
        out["token_type_ids"] = np.zeros_like(ids)
    return out


def validation_shape(config: Data2VecConfigBase, architecture: str, options: ExportOptions) -> tuple[int, int | None]:
    """A (batch, length) other than the export sample's, to prove the axes are dynamic."""
    batch = (options.batch_size or DEFAULT_BATCH) + 1
    rng = length_range(config, architecture)
    if rng is None:
        return batch, None
    family = family_of_architecture(architecture)
    length = options.length or min(DEFAULT_LENGTH[family], rng[1])
    other = length + (5 if family == "text" else 977)
    if other > rng[1]:
        other = max(rng[0], length - 3)
    return batch, other


# ------------------------------------------------------------------------------ validation
def max_abs_diffs(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-output max |expected - got| (inf for a shape mismatch or NaN on one side only)."""
    missing = sorted(set(expected) - set(got))
    if missing:
        raise ExportValidationError(f"the artifact does not return {missing}", {k: float("inf") for k in missing})
    out = {}
    for key, want in expected.items():
        a, b = np.asarray(want, dtype=np.float64), np.asarray(got[key], dtype=np.float64)
        if a.shape != b.shape:
            out[key] = float("inf")
            continue
        d = np.abs(a - b)
        d[np.isnan(a) & np.isnan(b)] = 0.0
        out[key] = float(np.max(d)) if d.size and not np.isnan(d).any() else (0.0 if not d.size else float("inf"))
    return out


def validate(fmt: ExportFormat, artifact: str, expected: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
             dtype: str = "float32", stream=None) -> dict[str, float]:
    """Run ``artifact`` on ``inputs``, compare with the eager ``expected`` outputs, print the
    max abs difference per output, raise ``ExportValidationError`` above the tolerance."""
    got = fmt.run(artifact, inputs)
    diffs = max_abs_diffs(expected, got)
    tol = fmt.tolerance_for(dtype)
    shape = ", ".join(f"{k}{tuple(v.shape)}" for k, v in inputs.items())
    if stream is not None:
        print(f"validation ({fmt.name}, {shape}), max abs diff vs eager (tolerance {tol:.0e}):", file=stream)
        for key, d in diffs.items():
            print(f"  {key:<20} {d:.3e}  {'ok' if d <= tol else 'TOO LARGE'}", file=stream)
    bad = {k: d for k, d in diffs.items() if not d <= tol}
    if bad:
        raise ExportValidationError(
            f"{fmt.name} artifact differs from the eager model: "
            + ", ".join(f"{k} {d:.3e}" for k, d in bad.items()) + f" > {tol:.0e}", diffs)
    return diffs


# ------------------------------------------------------------------------------ the export
@dataclass
class ExportResult:
    destination: str
    format: str
    architecture: str
    artifact: str
    diffs: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _read_source(src: str, options: ExportOptions) -> tuple[str, Data2VecConfigBase, str]:
    """``(local folder, config, architecture)``; a hub id is fetched (config, one weight format,
    tokenizer / processor files) into the hub cache first, as ``d2v-convert`` does."""
    try:
        opened = open_checkpoint(src, request=OpenRequest(extra=hub_companions))
    except (OSError, ImportError, ValueError) as e:
        raise ExportError(str(e)) from None
    if opened.kind not in ("folder", "hub"):
        raise ExportError(f"SRC {src} is not a directory (a checkpoint folder with {CONFIG_NAME} and weights)")
    src = opened.folder
    if opened.config_file is None:
        raise ExportError(f"SRC {src} has no {CONFIG_NAME}; is it a checkpoint folder?")
    try:
        config = load_pretrained(opened).config
        arch = resolve_architecture(config, options.architecture)
    except (ConversionError, ValueError, TypeError, OSError) as e:
        raise ExportError(str(e)) from None
    check_architecture(arch)
    if family_of(config) != ARCHITECTURES[arch]:
        raise ExportError(f"{arch} is a {ARCHITECTURES[arch]} model but {CONFIG_NAME} holds a {type(config).__name__}")
    return src, config, arch


def export_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, format: str, options: ExportOptions | None = None, *,
    overwrite: bool = False, stream=None, from_fairseq: bool = False, dictionary: str | None = None,
    head: str | None = None,
) -> ExportResult:
    """Export the checkpoint folder ``src`` to a new folder ``dst`` in ``format``.

    Args:
        src: checkpoint folder (``config.json`` + weights) or a Hugging Face Hub id; with
            ``from_fairseq``, an original fairseq data2vec 2.0 ``checkpoint.pt``.
        dst: folder to create; it appears complete (artifact, ``config.json``, preprocessing
            files) or not at all.
        format: a name of ``format_names()``.
        options: ``ExportOptions``.
        overwrite: replace an existing ``dst``.
        stream: where progress and the validation table go (None: silent).
        from_fairseq: convert ``src`` first (as ``d2v-convert --from fairseq``, into a
            temporary folder that is removed afterwards).
        dictionary, head: with ``from_fairseq``: the text model's ``dict.txt`` (copied to
            ``dst``) and the classification head to keep (see ``d2v-convert``).

    Returns:
        ``ExportResult`` with the per-output differences measured at the validation shape.

    Examples:
        >>> export_checkpoint("ckpt", "ckpt-onnx", "onnx")  # doctest: +SKIP
        >>> export_checkpoint("base_libri_960h.pt", "ctc-onnx", "onnx", from_fairseq=True)  # doctest: +SKIP
    """
    options = options or ExportOptions()
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    fmt_framework = FORMAT_FRAMEWORKS.get(format)
    if fmt_framework is None:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMAT_FRAMEWORKS)}")
    if os.path.lexists(dst) and not overwrite:
        raise ExportError(f"destination {dst} already exists; pass --overwrite to replace it")
    if from_fairseq:
        return _export_fairseq(src, dst, format, options, overwrite, stream, dictionary, head)
    if dictionary is not None or head is not None:
        raise ExportError("dictionary (--dict) and head (--head) apply only to a fairseq checkpoint (--from fairseq)")
    src, config, arch = _read_source(src, options)
    if same_or_nested(src, dst):
        raise ExportError(f"source {src} and destination {dst} must be separate folders")
    fmt = get_export_format(format)
    check_options(fmt, options)
    sample = sample_inputs(config, arch, options.batch_size, options.length)
    batch, length = validation_shape(config, arch, options)
    check_inputs = sample_inputs(config, arch, batch, length, seed=1)
    framework = get_framework(fmt.framework)
    copy, _ = companion_files(src)

    tmp = None
    try:
        model = framework.load_model(src, arch, options)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = fresh_sibling(dst, "tmp")
        if stream is not None:
            print(f"exporting {arch} from {src} to {format} ...", file=stream, flush=True)
        try:
            artifact = fmt.export(model, tmp, sample, options)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - exporters raise many types; all mean "not exported"
            raise ExportError(f"{format} export of {arch} failed ({type(e).__name__}: {e})") from e
        diffs = {}
        if options.validate:
            expected = framework.run_eager(model, check_inputs, arch, config)
            diffs = validate(fmt, artifact, expected, check_inputs, options.resolved_dtype, stream)
        for name in copy:
            copy_file(os.path.join(src, name), os.path.join(tmp, name))
        fsync_dir(tmp)
        try:
            install(tmp, dst, overwrite)
        except FileExistsError as e:
            raise ExportError(str(e)) from None
        tmp = None
        fsync_dir(os.path.dirname(dst))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    files = [os.path.join(dst, fmt.artifact)] + [os.path.join(dst, n) for n in copy]
    return ExportResult(dst, format, arch, os.path.join(dst, fmt.artifact), diffs, files)


def _export_fairseq(src, dst, format, options, overwrite, stream, dictionary, head) -> ExportResult:
    """``--from fairseq``: convert into a temporary folder, export that, remove it."""
    import tempfile

    from d2v_common.checkpoints.fairseq import convert_fairseq_to_folder

    with tempfile.TemporaryDirectory(prefix="d2v-export-fairseq-") as tmp:
        folder = os.path.join(tmp, "converted")
        try:
            report = convert_fairseq_to_folder(src, folder, head=head, dictionary=dictionary)
        except (ConversionError, ValueError, TypeError, OSError) as e:
            raise ExportError(f"cannot convert the fairseq checkpoint {src}: {e}") from None
        if stream is not None:
            print(f"converted the fairseq checkpoint {src} ({report.architecture})", file=stream)
        return export_checkpoint(folder, dst, format, options, overwrite=overwrite, stream=stream)


# ------------------------------------------------------------------------------ command line
def build_parser(formats: list[str], prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a Data2Vec checkpoint folder to a serving artifact that runs without d2v, "
        "validated against the eager model at a second batch size and length.",
        epilog="exit status: 0 done, 1 the artifact disagrees with the eager model (nothing written), "
        "2 usage or IO error (nothing written)",
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint folder (config.json + weights) or a hub id; "
                        "a fairseq checkpoint.pt with --from fairseq")
    parser.add_argument("dst", metavar="DST", help="new folder to create (artifact + config + preprocessing files)")
    parser.add_argument("--format", required=True, choices=formats, help="artifact kind")
    parser.add_argument("--from", dest="source_format", choices=("fairseq",),
                        help="fairseq: SRC is an original fairseq data2vec 2.0 checkpoint.pt, converted first "
                        "(as d2v-convert --from fairseq)")
    parser.add_argument("--dict", dest="dictionary", metavar="DICT",
                        help="with --from fairseq: the text model's fairseq dict.txt (checked, copied along)")
    parser.add_argument("--head", metavar="NAME",
                        help="with --from fairseq: which classification head of a text classifier to keep")
    parser.add_argument("--architecture", metavar="NAME",
                        help="HF class name when config.json names none (e.g. Data2VecTextForSequenceClassification)")
    parser.add_argument("--opset", type=int, help="ONNX opset (onnx only; default: the exporter's)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights/compute dtype (default float32; bfloat16: torch-export)")
    parser.add_argument("--batch-size", type=int, help=f"sample batch size to trace with (default {DEFAULT_BATCH})")
    parser.add_argument("--length", type=int,
                        help="sample tokens (text) or samples (audio) to trace with; the artifact takes any length")
    parser.add_argument("--no-validate", action="store_true", help="skip running the artifact against the model")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing unless something is wrong")
    return parser


def main(argv: list[str] | None = None, framework: str | None = None) -> int:
    """``d2v-export`` (every format), or ``python -m d2v_<fw>.export`` with ``framework`` set."""
    prog = {None: "d2v-export", "torch": "python -m d2v_torch.export", "keras": "python -m d2v_tf.export"}[framework]
    args = build_parser(format_names(framework), prog).parse_args(argv)
    options = ExportOptions(args.architecture, args.opset, args.dtype, args.batch_size, args.length,
                            validate=not args.no_validate)
    stream = None if args.quiet else sys.stdout
    try:
        result = export_checkpoint(args.src, args.dst, args.format, options, overwrite=args.overwrite, stream=stream,
                                   from_fairseq=args.source_format == "fairseq", dictionary=args.dictionary,
                                   head=args.head)
    except ExportValidationError as e:
        print(f"{prog}: error: {e}; nothing written to {os.path.abspath(args.dst)}", file=sys.stderr)
        return EXIT_MISMATCH
    except ExportError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if stream is not None:
        print(written_summary(result.destination, f"{result.format}, {result.architecture}", result.files))
    return EXIT_OK


if __name__ == "__main__":
    run_as_script("d2v_common.export")  # the canonical module, not this __main__ copy (see run_as_script)
