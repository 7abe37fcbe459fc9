"""The framework-neutral halves of ``from_pretrained`` / ``save_pretrained``: one loading path.

``load_pretrained(name_or_path, options, ...)`` is the whole load, for the models of both
frameworks (and their pretraining classes) and for ``d2v-convert``:

1. the name or path is opened by the first ``CheckpointSource`` of ``CHECKPOINT_SOURCES``
   that claims it (a fairseq ``.pt``, a single weight file, a local folder, a hub id); the
   source picks the weight format once (``checkpoint.select_weights``), and a hub id fetches
   exactly ``config.json`` and that format;
2. the config comes from ``config.json`` (or from the fairseq checkpoint itself);
3. the config is checked against the weights' header (``loading.check_config_fits``) before
   anything is allocated; the header read is kept, so the arrays are not opened again;
4. the caller's ``build(config)`` makes the model, whose weight spec is the one used to read
   and match the arrays (``loading.match_checkpoint``); new head tensors get fresh values.

Nothing is cached between calls: the opened checkpoint holds what it read until the caller
takes the arrays. Nested-build bookkeeping lives here too, so both packages initialise a head
model's weights exactly once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2v_common.checkpoints import formats as checkpoint

from d2v_common.checkpoints import fairseq

from d2v_common.checkpoints import hub
from d2v_common.checkpoints.formats import CheckpointFormat
from d2v_common.configs import CONFIG_NAME, Data2VecConfigBase, config_from_dict
from d2v_common.io_utils import read_json_object
from d2v_common.loader.matching import LoadReport, check_config_fits, complete_arrays, match_checkpoint
from d2v_common.spec.core import WeightSpec


# ------------------------------------------------------------------------- options
@dataclass(frozen=True)
class LoadOptions:
    """How a checkpoint is read: the keywords every ``from_pretrained`` takes.

    Args:
        checkpoint_format: a format name to prefer when a folder holds several
            (``"safetensors"``, ``"pt-bin"``, ``"tf-h5"``).
        ignore_mismatched_sizes: re-initialise tensors whose shape differs instead of raising.
        check_finite: refuse NaN / Inf values.
        hub: ``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``.

    Examples:
        >>> options = LoadOptions(checkpoint_format="tf-h5", hub={"revision": "main"})
    """

    checkpoint_format: str | None = None
    ignore_mismatched_sizes: bool = False
    check_finite: bool = False
    hub: Mapping[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- weights
class WeightFiles:
    """The weights a checkpoint offers in the chosen format: one file or a shard index.

    Each file is read once: the header check and the array read share the read (safetensors
    reads give lazy tensors, so the check costs no tensor data). A format that maps names
    through the model's spec (``tf_model.h5``) has its header read alone, then its arrays.

    Args:
        fmt: the registered format.
        path: the single file or the shard index.
    """

    def __init__(self, fmt: CheckpointFormat, path: str):
        self.fmt, self.path = fmt, path
        self._files: list[str] | None = None
        self._parts: dict[str, tuple[dict, list[str]]] = {}

    def files(self) -> list[str]:
        """The files holding the weights (the shards of an index), the index read once."""
        if self._files is None:
            self._files = checkpoint.weight_files(self.path)
        return self._files

    def read_file(self, file: str, spec: WeightSpec | None = None) -> tuple[dict, list[str]]:
        """``(arrays, unexpected names)`` of one file, from the earlier read when there was one;
        the read is handed over (not kept)."""
        if file in self._parts:
            return self._parts.pop(file)
        return self.fmt.read_file(file, spec if self.fmt.needs_spec else None)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name in the file: shape}`` for the config check."""
        if self.fmt.needs_spec:  # names and layouts need the spec: read the header alone
            return checkpoint.read_file_shapes(self.fmt.name, self.path)
        shapes: dict[str, tuple[int, ...]] = {}
        for file in self.files():
            if file not in self._parts:
                self._parts[file] = self.fmt.read_file(file, None)
            shapes.update({name: tuple(np.shape(a)) for name, a in self._parts[file][0].items()})
        return shapes

    def read(self, spec: WeightSpec | None) -> tuple[dict, list[str]]:
        """Every tensor: ``(arrays, unexpected names)``; a tensor in two shards is an error."""
        arrays: dict = {}
        unexpected: list[str] = []
        for file in self.files():
            part, extra = self.read_file(file, spec)
            clash = sorted(set(part) & set(arrays))
            if clash:
                raise checkpoint.CheckpointError(f"tensor {clash[0]!r} appears in more than one shard")
            arrays.update(part)
            unexpected += extra
        return arrays, unexpected


# ------------------------------------------------------------------------- an opened source
class OpenedCheckpoint:
    """What a name or path turned out to be, opened once: where its files are, its config
    and its weights. Made by a ``CheckpointSource``; ``load_pretrained`` walks it through.

    Args:
        kind: the source's name (``"folder"``, ``"hub"``, ``"weights-file"``, ``"fairseq"``).
        location: the local path the name resolved to (a hub id: its snapshot folder).
        folder: the folder holding the checkpoint's other files (tokenizer, processor).
        config_file: its ``config.json``, or None when there is none.
        weights: the chosen weights, or None (then ``missing_weights`` says why).
        converted: ``(config, arrays)`` of a checkpoint converted in memory (fairseq).
        missing_weights: the error to raise when weights are asked for and there are none.
        missing_config: the error to raise when the config is asked for and there is none.
        converted_format: the format a converted checkpoint is reported as.
        conversion_report: the converter's report (fairseq: kind, dropped tensors, notes).
        fairseq_checkpoint: the unpickled fairseq checkpoint, kept only when the request asked
            (``OpenRequest.keep_fairseq_checkpoint``), so its other tensors need no second read.
    """

    def __init__(
        self,
        kind: str,
        location: str,
        folder: str,
        config_file: str | None = None,
        weights: WeightFiles | None = None,
        converted: tuple[Data2VecConfigBase, dict] | None = None,
        missing_weights: Exception | None = None,
        missing_config: Exception | None = None,
        converted_format: str = "fairseq",
        conversion_report: Any = None,
        fairseq_checkpoint: dict | None = None,
    ):
        self.kind, self.location, self.folder = kind, location, folder
        self.converted_format = converted_format
        self.conversion_report, self.fairseq_checkpoint = conversion_report, fairseq_checkpoint
        self.config_file, self.converted = config_file, converted
        self._weights, self._missing_weights, self._missing_config = weights, missing_weights, missing_config

    @property
    def weights(self) -> WeightFiles:
        if self._weights is None:
            raise self._missing_weights or FileNotFoundError(f"no weights at {self.location}")
        return self._weights

    @property
    def format(self) -> str:
        """The format's name (``"fairseq"`` for a converted checkpoint)."""
        return self.converted_format if self.converted is not None else self.weights.fmt.name

    @property
    def source(self) -> str:
        """``"<path> (<format>)"``, as load reports show it."""
        return f"{self.location} ({self.format})"

    def read_config(self, config_class: type | None = None, **overrides: Any) -> Data2VecConfigBase:
        """The checkpoint's config as ``config_class`` (None: the class its ``model_type`` names)."""
        if self.converted is not None:
            config = self.converted[0]
            if config_class is not None and not isinstance(config, config_class):
                raise TypeError(
                    f"{self.location} holds a {type(config).__name__} model, not a {config_class.__name__} one"
                )
            return config.copy(**overrides)
        if self.config_file is None:
            raise self._missing_config or FileNotFoundError(f"no {CONFIG_NAME} at {self.location}")
        data = read_json_object(self.config_file)
        if config_class is None:
            config = config_from_dict(data)
            return config.copy(**overrides) if overrides else config
        return config_class.from_dict(data, **overrides)

    def check_fits(self, config: Data2VecConfigBase, ignore_mismatched_sizes: bool = False) -> None:
        """Refuse a ``config`` that does not fit the weights' header
        (``loading.ConfigCheckpointMismatch``); a converted checkpoint made its own config."""
        if self.converted is not None:
            return
        weights = self.weights
        check_config_fits(config, weights.fmt.name, weights.shapes(),
                          ignore_mismatched_sizes=ignore_mismatched_sizes, source=self.source)

    def read_arrays(self, spec: WeightSpec | None) -> tuple[dict, list[str]]:
        """``(arrays as stored, unexpected names)``; the arrays are handed over, not kept."""
        if self.converted is not None:
            config, arrays = self.converted
            self.converted = (config, {})  # the weights now belong to the caller
            return arrays, []
        return self.weights.read(spec)

    def load_arrays(
        self, spec: WeightSpec, options: LoadOptions = LoadOptions(), seed: int | None = None
    ) -> tuple[dict[str, np.ndarray], LoadReport]:
        """Every tensor of ``spec``, matched strictly (new head tensors initialised from ``seed``)."""
        source = self.source
        arrays, unexpected = self.read_arrays(spec)
        matched, report = match_checkpoint(
            arrays,
            spec,
            ignore_mismatched_sizes=options.ignore_mismatched_sizes,
            check_finite=options.check_finite,
            extra_unexpected=unexpected,
            source=source,
            warn=True,
        )
        return complete_arrays(matched, spec, report, seed), report


# ------------------------------------------------------------------------- the source registry
@dataclass(frozen=True)
class OpenRequest:
    """What the caller needs from a source: ``config.json`` (unless it brings a config),
    ``extra``: more files of a hub repository (``d2v-convert`` takes the tokenizer along), and
    ``keep_fairseq_checkpoint``: keep a fairseq checkpoint's unpickled dict on the opened
    checkpoint (the pretraining classes read its decoder and EMA teacher from the same read)."""

    with_config: bool = True
    extra: hub.Selector | None = None
    keep_fairseq_checkpoint: bool = False


@dataclass(frozen=True)
class CheckpointSource:
    """One kind of name or path ``from_pretrained`` and ``d2v-convert`` take.

    Args:
        name: the kind's name (``OpenedCheckpoint.kind``).
        locate: ``(name_or_path) -> str | None``: the local path (or hub id) this kind would
            open, or None when the name is not of this kind. Kinds are asked in registration
            order, and the first that answers opens it.
        open: ``(located, options, request) -> OpenedCheckpoint``.
    """

    name: str
    locate: Callable[[str], str | None]
    open: Callable[[str, LoadOptions, OpenRequest], OpenedCheckpoint]


CHECKPOINT_SOURCES: dict[str, CheckpointSource] = {}


def register_checkpoint_source(source: CheckpointSource, *, before: str | None = None) -> CheckpointSource:
    """Add ``source`` to ``CHECKPOINT_SOURCES`` (last, or just before the kind ``before``).

    Returns:
        ``source``, so an entry can be registered where it is defined.
    """
    if source.name in CHECKPOINT_SOURCES:
        raise ValueError(f"checkpoint source {source.name!r} is already registered")
    entries = list(CHECKPOINT_SOURCES.values())
    position = len(entries) if before is None else [e.name for e in entries].index(before)
    entries.insert(position, source)
    CHECKPOINT_SOURCES.clear()
    CHECKPOINT_SOURCES.update((e.name, e) for e in entries)
    return source


def open_checkpoint(
    name_or_path: str | os.PathLike, options: LoadOptions = LoadOptions(), request: OpenRequest = OpenRequest()
) -> OpenedCheckpoint:
    """Open ``name_or_path`` with the first source that claims it.

    Raises:
        FileNotFoundError / OSError: a local path that is missing, a broken or looping symbolic
            link, or a file that is no checkpoint; the message says what to pass instead.
    """
    name = os.fspath(name_or_path)
    for source in CHECKPOINT_SOURCES.values():
        located = source.locate(name)
        if located is not None:
            return source.open(located, options, request)
    hub.check_local_path(name)  # nothing there, or a broken link
    raise OSError(f"{name!r} is a file that is no checkpoint: pass the folder that holds {CONFIG_NAME} and the "
                  f"weights ({', '.join(checkpoint.registered_weight_files())})")


# --- fairseq: an original data2vec 2.0 checkpoint.pt, converted in memory
def _locate_fairseq(name: str) -> str | None:
    return fairseq.fairseq_checkpoint_file(name) if hub.is_local(name) else None


def _open_fairseq(file: str, options: LoadOptions, request: OpenRequest) -> OpenedCheckpoint:
    raw = fairseq.read_fairseq_checkpoint(file)  # the one unpickling of the file
    config, _, arrays, report = fairseq.convert_fairseq(file, checkpoint=raw)
    return OpenedCheckpoint("fairseq", file, os.path.dirname(file), converted=(config, arrays),
                            converted_format=fairseq.FAIRSEQ_FORMAT, conversion_report=report,
                            fairseq_checkpoint=raw if request.keep_fairseq_checkpoint else None)


# --- a single weight file (model.safetensors, pytorch_model.bin, tf_model.h5 or an index)
def _locate_weight_file(name: str) -> str | None:
    if os.path.isfile(name) and checkpoint.format_of_file(os.path.basename(name)) is not None:
        return name
    return None


def _open_weight_file(path: str, options: LoadOptions, request: OpenRequest) -> OpenedCheckpoint:
    folder, base = os.path.split(os.path.abspath(path))
    fmt = checkpoint.format_of_file(base)
    if base not in fmt.file_names:
        raise OSError(f"{path!r} is one shard of a sharded {fmt.name} checkpoint: pass the folder that holds it, "
                      f"its {fmt.index_name} and {CONFIG_NAME}")
    if options.checkpoint_format is not None and checkpoint.checkpoint_format(options.checkpoint_format) is not fmt:
        raise ValueError(f"{path!r} is a {fmt.name} file, but checkpoint_format={options.checkpoint_format!r} "
                         "was asked for")
    config_file = os.path.join(folder, CONFIG_NAME)
    missing_config = FileNotFoundError(
        f"{path!r} is a weight file ({fmt.name}) with no {CONFIG_NAME} beside it: pass the checkpoint folder "
        f"(config.json + weights), or the model's config as config=..."
    )
    return OpenedCheckpoint("weights-file", path, folder, config_file if os.path.isfile(config_file) else None,
                            WeightFiles(fmt, path), missing_config=missing_config)


# --- a local folder (config.json + one or more weight formats)
def _locate_folder(name: str) -> str | None:
    return name if os.path.isdir(name) else None


def _open_folder(folder: str, options: LoadOptions, request: OpenRequest) -> OpenedCheckpoint:
    present, broken = [], []
    for entry in os.listdir(folder):
        full = os.path.join(folder, entry)
        if os.path.isfile(full):
            present.append(entry)
        elif os.path.islink(full) and not os.path.exists(full):
            broken.append(entry)
    chosen = checkpoint.select_weights(present, prefer=options.checkpoint_format)
    missing = None
    if chosen is None:
        weight_names = [n for n in broken if checkpoint.format_of_file(n) is not None]
        if weight_names:  # a self-link or a dangling one: say so, not "no weights"
            try:
                hub.check_local_path(os.path.join(folder, weight_names[0]))
            except OSError as err:
                missing = OSError(f"{err}; it is the only weight file in {folder!r}")
        else:
            missing = FileNotFoundError(
                f"no weights in {folder!r}: expected one of {', '.join(checkpoint.registered_weight_files())}"
            )
    config_file = os.path.join(folder, CONFIG_NAME)
    missing_config = None
    if CONFIG_NAME in broken:
        try:
            hub.check_local_path(config_file)
        except OSError as err:
            missing_config = err
    return OpenedCheckpoint(
        "folder", folder, folder,
        config_file if CONFIG_NAME in present else None,
        None if chosen is None else WeightFiles(chosen[0], os.path.join(folder, chosen[1])),
        missing_weights=missing, missing_config=missing_config,
    )


# --- a Hugging Face Hub id: config.json and one weight format fetched into the hub cache
def _locate_hub_id(name: str) -> str | None:
    return None if hub.is_local(name) else name


class _HubWeights:
    """The hub selector of a model load: ``config.json``, the chosen weights, the extras;
    ``chosen`` says afterwards which format and file were picked."""

    def __init__(self, options: LoadOptions, request: OpenRequest):
        self.options, self.request = options, request
        self.chosen: tuple[CheckpointFormat, str] | None = None

    def __call__(self, available: set[str]) -> list[str]:
        has_torch = hub.torch_available()
        self.chosen = checkpoint.select_weights(
            available, prefer=self.options.checkpoint_format, torch_available=has_torch
        )
        if self.chosen is None:
            needs_torch = {
                name for fmt in checkpoint.CHECKPOINT_FORMATS.values() if fmt.needs_torch for name in fmt.file_names
            } & available
            if needs_torch and not has_torch:
                raise hub.HubFileMissing(
                    f"only {sorted(needs_torch)[0]} is there, and reading it needs torch (not installed): "
                    f"{hub.TORCH_EXTRA_HINT}, or load a copy converted with d2v-convert --to safetensors"
                )
            raise hub.HubFileMissing(f"no weights: looked for {', '.join(checkpoint.registered_weight_files())}")
        extra = list(self.request.extra(available)) if self.request.extra is not None else []
        return ([CONFIG_NAME] if self.request.with_config else []) + [self.chosen[1]] + extra


def _shards_of(name: str, local: str) -> list[str]:
    """A fetched shard index brings its shards along."""
    return [os.path.basename(shard) for shard in checkpoint.read_index(local)] if name.endswith(".index.json") else []


def _open_hub_id(repo_id: str, options: LoadOptions, request: OpenRequest) -> OpenedCheckpoint:
    selector = _HubWeights(options, request)
    folder = hub.resolve_pretrained(repo_id, selector, follow=_shards_of, **dict(options.hub))
    fmt, name = selector.chosen
    config_file = os.path.join(folder, CONFIG_NAME)
    return OpenedCheckpoint("hub", folder, folder, config_file if os.path.isfile(config_file) else None,
                            WeightFiles(fmt, os.path.join(folder, name)))


register_checkpoint_source(CheckpointSource("fairseq", _locate_fairseq, _open_fairseq))
register_checkpoint_source(CheckpointSource("weights-file", _locate_weight_file, _open_weight_file))
register_checkpoint_source(CheckpointSource("folder", _locate_folder, _open_folder))
register_checkpoint_source(CheckpointSource("hub", _locate_hub_id, _open_hub_id))


# ------------------------------------------------------------------------- the one loading path
@dataclass
class LoadedCheckpoint:
    """What ``load_pretrained`` returns.

    Args:
        config: the config (from the checkpoint, or the one passed in, overrides applied).
        arrays: every tensor of the built model's spec (None when nothing was built); may hold
            lazy tensors, read one by one when used.
        report: the load report (None when nothing was built).
        model: what ``build`` returned.
        checkpoint: the opened source (its ``folder`` holds the companion files).
    """

    config: Data2VecConfigBase
    arrays: dict | None = None
    report: LoadReport | None = None
    model: Any = None
    checkpoint: OpenedCheckpoint | None = None


def load_pretrained(
    name_or_path: str | os.PathLike | OpenedCheckpoint,
    options: LoadOptions = LoadOptions(),
    *,
    config_class: type | None = None,
    config: Data2VecConfigBase | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    build: Callable[[Data2VecConfigBase], Any] | None = None,
    seed: Callable[[], int] | int | None = None,
    extra_files: hub.Selector | None = None,
) -> LoadedCheckpoint:
    """Open a checkpoint and read it once: config, arrays and load report.

    Args:
        name_or_path: a checkpoint folder, a single weight file with ``config.json`` beside it,
            a fairseq ``checkpoint.pt`` (or a folder holding one), or a Hugging Face Hub id; or
            a checkpoint ``open_checkpoint`` opened already (``d2v-convert`` looks at it first).
        options: ``LoadOptions`` (format preference, strictness, hub keywords).
        config_class: the config class wanted (None: the one ``config.json``'s ``model_type`` names).
        config: use this config instead of the checkpoint's (``config.json`` is then not fetched).
        config_overrides: config fields to change.
        build: ``config -> model``: called once the config fits the weights' header; the
            model's ``spec`` is the weight spec the arrays are read and matched with. Without
            it, only the config is read (and nothing is checked).
        seed: the seed (or a function drawing it, called after ``build``) of new head tensors.
        extra_files: a hub selector of more files to fetch (companion files).

    Returns:
        ``LoadedCheckpoint``.

    Raises:
        OSError: the name or path cannot be opened (the message says what it is and what to pass).
        loading.ConfigCheckpointMismatch: the config does not fit the weights.
        ValueError: a tensor is missing or has the wrong shape (see ``match_checkpoint``).

    Examples:
        >>> loaded = load_pretrained("ckpt", config_class=Data2VecVisionConfig,
        ...                          build=Data2VecVisionModel)  # doctest: +SKIP
        >>> model, arrays, report = loaded.model, loaded.arrays, loaded.report  # doctest: +SKIP
    """
    if isinstance(name_or_path, OpenedCheckpoint):
        opened = name_or_path
    else:
        opened = open_checkpoint(name_or_path, options, OpenRequest(with_config=config is None, extra=extra_files))
    overrides = dict(config_overrides or {})
    if config is None:
        config = opened.read_config(config_class, **overrides)
    elif overrides:
        config = config.copy(**overrides)
    loaded = LoadedCheckpoint(config, checkpoint=opened)
    if build is None:
        return loaded
    # an edited config.json fails here, from the file's header, before anything is allocated
    opened.check_fits(config, options.ignore_mismatched_sizes)
    loaded.model = build(config)
    loaded.arrays, loaded.report = opened.load_arrays(
        loaded.model.spec, options, seed() if callable(seed) else seed
    )
    return loaded


# ------------------------------------------------------------------------- single steps
def check_checkpoint_fits(
    path: str | os.PathLike,
    config: Data2VecConfigBase,
    *,
    prefer: str | None = None,
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Refuse a ``config`` that does not fit the checkpoint in ``path`` from its header alone
    (``loading.ConfigCheckpointMismatch``); ``load_pretrained`` does this before building."""
    opened = open_checkpoint(path, LoadOptions(checkpoint_format=prefer), OpenRequest(with_config=False))
    opened.check_fits(config, ignore_mismatched_sizes)


def load_arrays_for(
    path: str | os.PathLike,
    spec: WeightSpec,
    *,
    prefer: str | None = None,
    ignore_mismatched_sizes: bool = False,
    check_finite: bool = False,
    seed: int | None = None,
) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Every tensor of ``spec`` from the checkpoint in ``path`` (new head tensors initialised)."""
    options = LoadOptions(prefer, ignore_mismatched_sizes, check_finite)
    return open_checkpoint(path, options, OpenRequest(with_config=False)).load_arrays(spec, options, seed)


def load_config_for(config_class: type, path: str | os.PathLike, **overrides) -> Data2VecConfigBase:
    """The config of the checkpoint at ``path`` as ``config_class`` (a fairseq ``.pt`` too)."""
    return open_checkpoint(path).read_config(config_class, **overrides)


save_arrays_for = checkpoint.write_pretrained


# ------------------------------------------------------------------------- build state
_STATE = threading.local()


def _depth(name: str) -> int:
    return getattr(_STATE, name, 0)


@contextlib.contextmanager
def _entered(name: str) -> Iterator[None]:
    setattr(_STATE, name, _depth(name) + 1)
    try:
        yield
    finally:
        setattr(_STATE, name, _depth(name) - 1)


def build_nested(cls: type, *args, **kwargs):
    """Build a model that lives inside another (a head's encoder): the outer model checks
    and initialises all weights once, so the inner one does neither."""
    with _entered("nested"):
        return cls(*args, **kwargs)


def building_nested() -> bool:
    return _depth("nested") > 0


@contextlib.contextmanager
def weights_come_later() -> Iterator[None]:
    """Build without the random initialisation (``from_pretrained`` loads weights next)."""
    with _entered("no_init"):
        yield


def skip_initialisation() -> bool:
    return _depth("no_init") > 0
