"""``d2v-convert``: convert a checkpoint directory between weight formats without a model.

    d2v-convert SRC DST --to {safetensors,tf-h5,pt-bin} [--from FMT] [--architecture NAME]
                        [--overwrite] [--progress | --quiet] [--revision REV] [--cache-dir DIR]
                        [--local-files-only] [--force-download]
    d2v-convert CKPT.pt DST --from fairseq [--dict dict.txt | dict.ltr.txt] [--head NAME] [--to FMT]

SRC is a directory or a Hugging Face Hub id (``facebook/data2vec-audio-base-960h``): a hub id
fetches ``config.json``, one weight format and the repository's other non-weight files
(tokenizer, processor config) through ``huggingface_hub``; the source is opened and its config
read by the loading path every ``from_pretrained`` takes (``d2v_common.loader.pretrained``). With
``--from fairseq``, SRC is an original fairseq data2vec 2.0 checkpoint (``d2v_common.checkpoints.fairseq``).

This is the model-free path through the loading machinery: ``config.json`` + the architecture
give the weight spec, the source file is read into canonical arrays, ``match_checkpoint``
checks them strictly against the spec, and ``write_checkpoint`` writes the target format.
Only numpy, safetensors and h5py are needed (torch too for ``pytorch_model.bin``).

Guarantees:

* the tensor set never changes silently: a missing, unexpected, shape-mismatched or renamed
  tensor prints the load report and exits 1 before anything is written;
* tensors keep their dtype and bytes (except bfloat16 ``.bin`` tensors, which numpy cannot
  hold: they become float32, exactly, with a note);
* the destination appears complete or not at all: everything is written into a temporary
  sibling directory that is renamed into place (``--overwrite`` swaps the old one out first).

Exit codes: 0 done, 1 the checkpoint does not match the spec, 2 usage or IO error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np

from d2v_common.checkpoints import formats as checkpoint
from d2v_common.configs import CONFIG_NAME, Data2VecConfigBase
from d2v_common.io_utils import (
    EXIT_ERROR, EXIT_MISMATCH, EXIT_OK, copy_file, fresh_sibling, fsync_dir, install, run_as_script, same_or_nested,
    written_summary,
)
from d2v_common.loader.matching import ConfigCheckpointMismatch, LoadReport, match_checkpoint
from d2v_common.loader.pretrained import LoadOptions, OpenRequest, WeightFiles, load_pretrained, open_checkpoint
from d2v_common.spec import ARCHITECTURES, canonical_architecture, weight_spec
from d2v_common.spec.core import WeightSpec

# The registered checkpoint formats (d2v_common.checkpoints.formats.CHECKPOINT_FORMATS); those that need
# no torch are listed first.
FORMATS = tuple(f.name for f in sorted(checkpoint.CHECKPOINT_FORMATS.values(), key=lambda f: f.needs_torch))
# Above this much weight data a progress bar is shown unless --quiet.
PROGRESS_THRESHOLD_BYTES = 50 * 2**20
# Base models whose spec depends on HF's ``add_pooling_layer`` constructor argument: the file
# decides which variant it is.
_POOLER_OPTIONAL = {"Data2VecTextModel", "Data2VecVisionModel"}


class ConversionError(Exception):
    """The conversion could not run (bad arguments, unreadable input, IO failure): exit 2."""


class CheckpointMismatch(Exception):
    """The checkpoint does not match the architecture's spec: exit 1, nothing written."""

    def __init__(self, report: LoadReport, problems: list[str]):
        self.report = report
        self.problems = problems
        super().__init__("\n".join([str(report), *problems]))


@dataclass
class ConversionResult:
    destination: str
    architecture: str
    source_format: str
    target_format: str
    report: LoadReport
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ progress
class _Progress:
    """Byte-counting progress: a tqdm bar when tqdm is installed, else a plain stderr counter."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._shown = -1
        self.enabled = enabled
        if not enabled:
            return
        tqdm = _load_tqdm()
        if tqdm is not None:
            self._bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="converting", file=self.stream, leave=False)

    def set_total(self, total: int) -> None:
        self.total = max(int(total), 1)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def phase(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)
        elif self.enabled:
            self._draw(desc)

    def advance(self, nbytes: int) -> None:
        self.done = min(self.total, self.done + int(nbytes))
        if self._bar is not None:
            self._bar.update(int(nbytes))
        elif self.enabled:
            self._draw()

    def _draw(self, desc: str = "") -> None:
        percent = 100 * self.done // self.total
        if percent != self._shown or desc:
            self._shown = percent
            label = f"{desc}: " if desc else ""
            self.stream.write(f"\r{label}{percent:3d}% of {self.total / 2**20:.1f} MiB")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _load_tqdm():
    """``tqdm.tqdm`` if the optional ``progress`` extra is installed, else None."""
    try:
        return importlib.import_module("tqdm").tqdm
    except ImportError:
        return None


# ------------------------------------------------------------------------------ source side
def resolve_architecture(config: Data2VecConfigBase, override: str | None) -> str:
    """The HF PyTorch class name: ``override``, else ``config.architectures[0]`` ("TF" stripped)."""
    if override is not None:
        name = override
    else:
        archs = config.architectures
        if not archs:
            raise ConversionError(
                f"{CONFIG_NAME} names no architecture; pass --architecture with one of "
                + ", ".join(sorted(ARCHITECTURES))
            )
        if not isinstance(archs, list) or not isinstance(archs[0], str):
            raise ConversionError(f"{CONFIG_NAME}: 'architectures' must be a list of class names, got {archs!r}")
        name = archs[0]
    try:
        return canonical_architecture(name)
    except ValueError as e:
        raise ConversionError(f"{e}; pass --architecture to choose one") from None


def _candidate_specs(config: Data2VecConfigBase, arch: str) -> list[WeightSpec]:
    """The spec(s) a checkpoint of ``arch`` may follow; the HF default comes first."""
    try:
        specs = [weight_spec(config, arch)]
        if arch in _POOLER_OPTIONAL:
            with_pooler = weight_spec(config, arch, add_pooling_layer=True)
            without = weight_spec(config, arch, add_pooling_layer=False)
            specs += [s for s in (with_pooler, without) if s.names() != specs[0].names()]
    except (ValueError, TypeError) as e:
        raise ConversionError(f"cannot build the weight spec of {arch}: {e}") from None
    return specs


def _read_source(weights: WeightFiles, spec: WeightSpec, progress: _Progress):
    """``(arrays, unexpected names)`` read into memory file by file, ticking ``progress``
    (a file whose header the config check read is not opened again)."""
    arrays: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for file in weights.files():
        progress.phase(f"reading {os.path.basename(file)}")
        part, extra = weights.read_file(file, spec)
        clash = sorted(set(part) & set(arrays))
        if clash:
            raise checkpoint.CheckpointError(f"tensor {clash[0]!r} appears in more than one shard")
        arrays.update({name: np.asarray(array) for name, array in part.items()})
        unexpected += extra
        progress.advance(os.path.getsize(file))
    return arrays, unexpected


def _match(arrays, unexpected, spec: WeightSpec, source: str):
    """Check ``arrays`` against ``spec``: ``(arrays to write, report, problems, notes)``."""
    notes: list[str] = []
    try:
        # Mismatches are collected into the report instead of raising at the first one.
        _, report = match_checkpoint(arrays, spec, ignore_mismatched_sizes=True, extra_unexpected=unexpected,
                                     source=source, warn=False)
    except ValueError as e:  # a missing backbone tensor or an unusable dtype: the report says so
        report = LoadReport(spec.architecture, source, errors=[str(e)])
        return None, report, ["error: the checkpoint does not match the architecture's weight spec"], notes

    out = spec.tie({name: arrays[name] for name in spec.names() if name in arrays})

    problems = []
    renamed = sorted(n for n in arrays if n not in spec and n not in report.unexpected)
    if renamed:
        problems.append(
            f"{len(renamed)} tensor name(s) differ from {spec.architecture}'s by the "
            f"'{spec.base_prefix}.' prefix (e.g. {renamed[0]!r}); pass the checkpoint's own --architecture"
        )
    for p in spec:
        if p.tied_to is not None and p.name in arrays and p.tied_to in arrays:
            a, b = arrays[p.name], arrays[p.tied_to]
            if a.shape == b.shape and not (a.dtype == b.dtype and np.array_equal(a, b)):
                problems.append(f"{p.name} should be a copy of {p.tied_to} but holds other values")
    cast = sorted({str(a.dtype) for n, a in out.items() if a.dtype != np.dtype(spec[n].dtype)})
    if cast:
        notes.append(f"note: tensors keep their stored dtype ({', '.join(cast)}); d2v models load them as the "
                     "spec's dtype")
    if not report.clean:
        problems.insert(0, "error: the checkpoint does not match the architecture's weight spec")
    return out, report, problems, notes


# ------------------------------------------------------------------------------ destination side
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin.index.json", ".h5", ".msgpack",
                    ".msgpack.index.json")


def _is_weight_file(name: str) -> bool:
    """Weight files of any format (shards too) stay behind: DST gets only the target format."""
    if checkpoint.format_of_file(name) is not None or name.endswith(_WEIGHT_SUFFIXES):
        return True
    return name.startswith(("pytorch_model", "tf_model", "flax_model")) and name.endswith((".bin", ".h5"))


def companion_files(src: str) -> tuple[list[str], list[str]]:
    """``(files to copy, entries skipped)``: config, tokenizer and processor files go along."""
    copy, skipped = [], []
    for name in sorted(os.listdir(src)):
        full = os.path.join(src, name)
        if os.path.isfile(full) and not _is_weight_file(name):
            copy.append(name)
        elif not os.path.isfile(full):
            skipped.append(name + "/")
    return copy, skipped


def hub_companions(available: set[str]) -> list[str]:
    """The non-weight files of a hub repository that d2v-convert takes along (configs, tokenizer, card)."""
    return sorted(n for n in available if not _is_weight_file(n) and not n.startswith("."))


# ------------------------------------------------------------------------------ the conversion
def _refuse_fairseq_source(src) -> None:
    """A fairseq checkpoint needs --from fairseq: say so instead of "not a directory"."""
    from d2v_common.checkpoints.fairseq import missing_from_fairseq_hint

    hint = missing_from_fairseq_hint(src)
    if hint is not None:
        raise ConversionError(hint)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    *,
    source_format: str | None = None,
    architecture: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **hub_options,
) -> ConversionResult:
    """Convert the checkpoint directory (or Hugging Face Hub id) ``src`` into ``dst`` holding ``to`` weights.

    ``hub_options``: ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
    ``force_download`` for a hub id (``d2v_common.checkpoints.hub.resolve_pretrained``).

    ``progress``: True / False, or None for "on above 50 MB". Raises ``ConversionError`` (bad
    input or IO), ``loading.ConfigCheckpointMismatch`` (config.json does not fit the weights'
    header) or ``CheckpointMismatch`` (report problems); in every case nothing is left at
    ``dst``. The result's ``notes`` say what the user should know (upcasts, files not copied).
    """
    if to not in FORMATS:
        raise ConversionError(f"unknown target format {to!r}; use one of {', '.join(FORMATS)}")
    if source_format is not None and source_format not in FORMATS:
        raise ConversionError(f"unknown source format {source_format!r}; use one of {', '.join(FORMATS)}")
    dst = os.path.abspath(os.fspath(dst))
    _refuse_fairseq_source(src)  # recognised from its pickle keys, before anything is read
    not_a_folder = ConversionError(f"source {src} is not a directory; SRC is a checkpoint folder (config.json + "
                                   "weights) or a Hugging Face Hub id")
    if os.path.isfile(src):  # a lone file is no source here: it is not opened (nor unpickled) at all
        raise not_a_folder
    options = LoadOptions(checkpoint_format=source_format, hub=hub_options)
    try:  # a hub id: config, one weight format and the companion files, fetched into the hub cache
        opened = open_checkpoint(src, options, OpenRequest(extra=hub_companions))
    except (OSError, ImportError, ValueError) as e:
        raise ConversionError(str(e)) from None
    if opened.kind not in ("folder", "hub"):
        raise not_a_folder
    src = opened.folder
    if os.path.lexists(dst):
        if not overwrite:
            raise ConversionError(f"destination {dst} already exists; pass --overwrite to replace it")
        if not os.path.isdir(dst) or os.path.islink(dst):
            raise ConversionError(f"destination {dst} exists and is not a directory; refusing to replace it")
    if same_or_nested(src, dst):
        raise ConversionError(f"source {src} and destination {dst} must be separate directories")

    try:
        config = load_pretrained(opened, options).config
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"cannot read {os.path.join(src, CONFIG_NAME)}: {e}") from None
    arch = resolve_architecture(config, architecture)

    try:
        weights = opened.weights
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None
    fmt, path = weights.fmt.name, weights.path
    if source_format is not None and fmt != source_format:
        raise ConversionError(f"no {source_format} weights in {src} (found {os.path.basename(path)})")
    try:  # from the header alone, before any spec list is built (ConfigCheckpointMismatch goes through)
        opened.check_fits(config)
    except ConfigCheckpointMismatch:
        raise
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None
    specs = _candidate_specs(config, arch)
    try:
        sizes = sum(os.path.getsize(f) for f in weights.files())
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e}") from None
    show = progress if progress is not None else sizes > PROGRESS_THRESHOLD_BYTES
    bar = _Progress(2 * sizes, bool(show))
    notes: list[str] = []
    tmp = None
    try:
        # Reading an h5 file goes through a spec: the largest candidate claims every entry.
        reader_spec = max(specs, key=len)
        try:
            arrays, unexpected = _read_source(weights, reader_spec, bar)
            if weights.fmt.conversion_notes is not None:
                notes += weights.fmt.conversion_notes(path, reader_spec)
        except (OSError, ValueError) as e:  # CheckpointError is a ValueError
            raise ConversionError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - h5py / torch on a damaged file: still a clean error
            raise ConversionError(f"cannot read {path}: {type(e).__name__}: {e}") from None

        source = opened.source
        attempts = [_match(arrays, unexpected, s, source) for s in specs]
        chosen = next((a for a in attempts if not a[2]), attempts[0])
        out, report, problems, match_notes = chosen
        if problems:
            raise CheckpointMismatch(report, problems)
        notes += match_notes
        spec = specs[attempts.index(chosen)]

        copy, skipped = companion_files(src)
        if skipped:
            notes.append(f"note: not copied (not plain files): {', '.join(skipped)}")
        out_bytes = sum(a.nbytes for a in out.values())
        bar.set_total(bar.done + out_bytes)

        parent = os.path.dirname(dst)
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = fresh_sibling(dst, "tmp")
            bar.phase(f"writing {to}")
            written = checkpoint.write_checkpoint(tmp, out, spec, [to])
            bar.advance(out_bytes)
            for name in copy:
                copy_file(os.path.join(src, name), os.path.join(tmp, name))
            fsync_dir(tmp)
            install(tmp, dst, overwrite)
            tmp = None
            fsync_dir(parent)
        except ConversionError:
            raise
        except FileExistsError as e:  # DST appeared meanwhile, and --overwrite was not given
            raise ConversionError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - h5py, torch and the OS raise many types; all mean "not written"
            raise ConversionError(f"writing {dst} failed ({type(e).__name__}: {e}); nothing was written") from None
    finally:
        bar.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    files = [os.path.join(dst, os.path.basename(w)) for w in written] + [os.path.join(dst, n) for n in copy]
    return ConversionResult(dst, arch, fmt, to, report, files, notes)


# ------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d2v-convert",
        description="Convert a Data2Vec checkpoint directory between weight formats (bit-exact). "
        "config.json and the other non-weight files are copied along.",
        epilog="exit status: 0 done, 1 the weights do not match the architecture (nothing written), "
        "2 usage or IO error",
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint directory (config.json + weights) or a Hugging Face "
                        "Hub id such as facebook/data2vec-audio-base-960h; a fairseq checkpoint.pt with --from fairseq")
    parser.add_argument("dst", metavar="DST", help="new directory to create")
    parser.add_argument("--to", choices=FORMATS, help="target weight format (required, except with --from "
                        "fairseq: default safetensors)")
    parser.add_argument("--from", dest="source_format", choices=FORMATS + ("fairseq",),
                        help="source format when SRC holds several (default: "
                        + " > ".join(checkpoint.CHECKPOINT_FORMATS) + "); "
                        "'fairseq': an original fairseq data2vec 2.0 checkpoint")
    parser.add_argument("--dict", dest="dictionary", metavar="DICT",
                        help="with --from fairseq: the model's fairseq dictionary, checked against its vocabulary "
                        "and copied along: a text model's dict.txt, or a CTC model's letter dictionary "
                        "dict.ltr.txt (also written as the tokenizer: vocab.json, tokenizer_config.json)")
    parser.add_argument("--head", metavar="NAME",
                        help="with --from fairseq: which classification head of a text classifier to keep")
    parser.add_argument("--architecture", metavar="NAME",
                        help="HF class name (e.g. Data2VecVisionForImageClassification); "
                        "default: config.json's architectures[0]")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    hub = parser.add_argument_group("hub ids (through huggingface_hub and its cache; HF_TOKEN / `hf auth login` for "
                                    "private or gated repositories)")
    hub.add_argument("--revision", help="branch, tag or commit hash (default: main)")
    hub.add_argument("--cache-dir", help="hub cache folder (default: HF_HUB_CACHE)")
    hub.add_argument("--local-files-only", action="store_true", help="use the hub cache only (as HF_HUB_OFFLINE=1)")
    hub.add_argument("--force-download", action="store_true", help="download again even when cached")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", default=None,
                       help="always show a progress bar (default: only above 50 MB)")
    shown.add_argument("--quiet", action="store_true", help="print nothing unless something is wrong")
    return parser


def _main_fairseq(args) -> int:
    from d2v_common.checkpoints.fairseq import convert_fairseq_to_folder

    try:
        report = convert_fairseq_to_folder(args.src, args.dst, head=args.head, dictionary=args.dictionary,
                                           formats=(args.to or "safetensors",), overwrite=args.overwrite)
    except (OSError, ValueError, TypeError, ConversionError) as e:
        print(f"d2v-convert: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(report)
        print(f"wrote {os.path.abspath(args.dst)} ({args.to or 'safetensors'})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source_format == "fairseq":
        return _main_fairseq(args)
    try:  # before the usage checks below: a forgotten --from fairseq is the likelier mistake
        _refuse_fairseq_source(args.src)
    except ConversionError as e:
        print(f"d2v-convert: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.dictionary or args.head:
        parser.error("--dict and --head apply only with --from fairseq")
    if args.to is None:
        parser.error("the following arguments are required: --to")
    progress = False if args.quiet else args.progress
    try:
        result = convert(args.src, args.dst, args.to, source_format=args.source_format,
                         architecture=args.architecture, overwrite=args.overwrite, progress=progress,
                         revision=args.revision, cache_dir=args.cache_dir, local_files_only=args.local_files_only,
                         force_download=args.force_download)
    except ConfigCheckpointMismatch as e:
        print(f"d2v-convert: error: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"nothing written to {os.path.abspath(args.dst)}", file=sys.stderr)
        return EXIT_MISMATCH
    except CheckpointMismatch as e:
        print(e.report, file=sys.stderr)
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"nothing written to {os.path.abspath(args.dst)}", file=sys.stderr)
        return EXIT_MISMATCH
    except ConversionError as e:
        print(f"d2v-convert: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not args.quiet:
        print(result.report)
        for note in result.notes:
            print(note)
        print(written_summary(result.destination, result.target_format, result.files))
    return EXIT_OK


if __name__ == "__main__":
    run_as_script("d2v_common.convert")  # the canonical module, not this __main__ copy (see run_as_script)
