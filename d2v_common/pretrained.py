"""The framework-neutral halves of ``from_pretrained`` / ``save_pretrained``.

A model package builds its model, then asks here for a complete set of canonical arrays
(checkpoint tensors matched to the spec, fresh values for new head tensors), or hands its
canonical arrays here to be written. Nested-build bookkeeping lives here too, so both
packages initialise a head model's weights exactly once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import numpy as np

from d2v_common import checkpoint
from d2v_common.configs import CONFIG_NAME, Data2VecConfigBase
from d2v_common.loading import LoadReport, check_config_fits, complete_arrays, match_checkpoint
from d2v_common.spec.core import WeightSpec


def check_checkpoint_fits(
    path: str | os.PathLike,
    config: Data2VecConfigBase,
    *,
    prefer: str | None = None,
    ignore_mismatched_sizes: bool = False,
) -> None:
    """Refuse a ``config`` that does not fit the checkpoint in ``path`` from its header alone
    (``loading.ConfigCheckpointMismatch``); call it before building the model."""
    path = os.fspath(path)
    from d2v_common import fairseq

    if fairseq.fairseq_checkpoint_file(path) is not None:
        return  # its config is read from the checkpoint itself
    fmt, shapes = checkpoint.read_shapes(path, prefer)
    check_config_fits(config, fmt, shapes, ignore_mismatched_sizes=ignore_mismatched_sizes, source=f"{path} ({fmt})")


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
    path = os.fspath(path)
    source = fairseq_source(path)
    if source is not None:  # an original fairseq checkpoint, converted in memory
        arrays, unexpected, fmt = dict(source[1]), [], "fairseq"
        _FAIRSEQ_CACHE.clear()  # the weights now belong to the caller; keep no second copy
    else:
        arrays, unexpected, fmt = checkpoint.read_checkpoint(path, spec, prefer=prefer)
    matched, report = match_checkpoint(
        arrays,
        spec,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        check_finite=check_finite,
        extra_unexpected=unexpected,
        source=f"{path} ({fmt})",
        warn=True,
    )
    return complete_arrays(matched, spec, report, seed), report


def load_config_for(config_class: type, path: str | os.PathLike, **overrides) -> Data2VecConfigBase:
    """``config_class.from_pretrained(path)``, or the config of a fairseq checkpoint at ``path``."""
    source = fairseq_source(os.fspath(path))
    if source is None:
        return config_class.from_pretrained(path, **overrides)
    config = source[0]
    if not isinstance(config, config_class):
        raise TypeError(f"{path} holds a {type(config).__name__} model, not a {config_class.__name__} one")
    return config.copy(**overrides) if overrides else config.copy()


_FAIRSEQ_CACHE: dict = {}


def fairseq_source(path: str) -> tuple | None:
    """``(config, arrays)`` when ``path`` is a fairseq checkpoint (a ``.pt`` file, or a folder
    with one ``checkpoint*.pt`` and no config.json), else None. The conversion is cached from
    the config read until the weights are taken (``load_arrays_for``), so the file is read once."""
    from d2v_common import fairseq

    file = fairseq.fairseq_checkpoint_file(path)
    if file is None:
        return None
    stat = os.stat(file)
    key = (os.path.abspath(file), stat.st_mtime_ns, stat.st_size)
    if key not in _FAIRSEQ_CACHE:
        config, _, arrays, _ = fairseq.convert_fairseq(file)
        _FAIRSEQ_CACHE.clear()
        _FAIRSEQ_CACHE[key] = (config, arrays)
    return _FAIRSEQ_CACHE[key]


def save_arrays_for(
    directory: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    spec: WeightSpec,
    config: Data2VecConfigBase,
    formats: list[str],
) -> list[str]:
    """Write the weights in each format and ``config.json``, staged so that an interrupted
    save leaves the previous checkpoint intact (config renamed in last)."""
    config.architectures = [spec.architecture]
    config_bytes = config.to_json_string().encode("utf-8")
    return checkpoint.write_checkpoint(directory, arrays, spec, formats, extra_files={CONFIG_NAME: config_bytes})


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
