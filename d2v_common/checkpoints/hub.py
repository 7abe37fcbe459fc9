"""``from_pretrained("org/name")``: hub ids resolved to local files through ``huggingface_hub``.

Every ``from_pretrained`` in d2v (models in both frameworks, configs, processors) and
``d2v-convert``'s SRC take a local path or a Hugging Face Hub id. A local file or directory of
that name wins; anything else that looks like a repository id is looked up on the Hub. All
network and cache work is ``huggingface_hub``'s (``list_repo_files``, ``hf_hub_download``,
``snapshot_download``), so its cache layout (``HF_HUB_CACHE`` / ``HF_HOME``), ``HF_HUB_OFFLINE``,
saved tokens and progress bars apply, and a cache filled by transformers is reused as it is.

This module only fetches: the caller says which files it needs (``select``), and which files a
fetched one brings along (``follow``: a shard index its shards). Which weight format a model
load takes is the loader's choice (``d2v_common.loader.pretrained``'s hub source, through the
checkpoint format registry). ``huggingface_hub`` is the optional ``hub`` extra
(``pip install 'd2v[hub]'``).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

# HF's own keyword names, accepted by every from_pretrained.
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token", "force_download")
HUB_EXTRA_HINT = "pip install 'd2v[hub]'"
TORCH_EXTRA_HINT = "pip install 'd2v[torch]' torch==2.13.0"

Selector = Callable[[set[str]], Sequence[str]]
# (file name, its local path) -> more files it needs (a shard index: its shards)
Follower = Callable[[str, str], Sequence[str]]


class HubFileMissing(FileNotFoundError):
    """A file a load needs is not in the repository (or, offline, not in the cache)."""


def pop_hub_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the hub keywords (``revision``, ``cache_dir``, ...) out of a ``from_pretrained``'s
    ``**kwargs``, so that the rest can go on to the config as overrides."""
    return {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs}


def is_local(path_or_id: str | os.PathLike) -> bool:
    """Whether ``path_or_id`` names something on disk, or can only be meant as a path (absolute,
    ``./``, ``~``, more than one ``/``): such names are never looked up on the Hub."""
    path = os.fspath(path_or_id)
    if os.path.lexists(path):  # a broken or looping symbolic link is still a local name
        return True
    if os.path.isabs(path) or path.startswith((".", "~")) or os.sep != "/" and os.sep in path:
        return True
    return path.count("/") > 1 or path.endswith("/") or not path


def check_local_path(path: str | os.PathLike) -> None:
    """Raise the error that says what is wrong with a local ``path`` that cannot be read:
    nothing is there, or it is a symbolic link that loops or points nowhere.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        OSError: ``path`` is a symbolic link that loops or whose target is missing.
    """
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as err:
            why = "loops" if err.errno == errno.ELOOP else "points to nothing"
        else:  # pragma: no cover - exists() said otherwise
            why = "cannot be followed"
        raise OSError(f"{path!r} is a symbolic link that {why} (-> {os.readlink(path)!r}); point it at the "
                      "checkpoint folder, or pass that folder itself")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path!r} is not a directory or file here: no such folder or hub id (a Hugging "
                                "Face Hub id is 'org/name'); check the path")


def _hub():
    """huggingface_hub with the submodules used here loaded (the package loads them lazily)."""
    try:
        for module in ("huggingface_hub.constants", "huggingface_hub.errors", "huggingface_hub.utils"):
            importlib.import_module(module)
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise ImportError(
            "loading from the Hugging Face Hub needs the optional package 'huggingface_hub': " + HUB_EXTRA_HINT
        ) from None


def torch_available() -> bool:
    """Whether torch can be imported here (``pytorch_model.bin`` needs it); torch is not imported."""
    return importlib.util.find_spec("torch") is not None


# ------------------------------------------------------------------------ what to fetch
def files(*required: str, optional: Sequence[str] = ()) -> Selector:
    """A selector for fixed file names: ``required`` must be there, ``optional`` are taken if there."""

    def select(available: set[str]) -> list[str]:
        missing = [name for name in required if name not in available]
        if missing:
            raise HubFileMissing(f"no {' or '.join(missing)}")
        return [*required, *(name for name in optional if name in available)]

    return select


# ------------------------------------------------------------------------ resolution
def resolve_pretrained(
    path_or_id: str | os.PathLike,
    select: Selector | Sequence[str],
    *,
    follow: Follower | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> str:
    """A local path for ``path_or_id``: itself when it is local, else the hub snapshot folder
    holding the files ``select`` picks from the repository.

    Args:
        path_or_id: a local file or directory, or a hub repository id (``"org/name"``).
        select: the file names to fetch, or a function from the set of file names the
            repository holds (offline: the cached ones) to the names to fetch.
        follow: ``(name, local path) -> more names``, called for each fetched file: what it
            brings along (the loader passes one that reads a shard index for its shards).
        revision: branch, tag or commit hash (default ``"main"``).
        cache_dir: the hub cache (default ``HF_HUB_CACHE``).
        local_files_only: use the cache only (as ``HF_HUB_OFFLINE=1`` does).
        token: a Hub token; None uses the saved login, False sends none.
        force_download: download again even when cached.

    Returns:
        The path: ``path_or_id`` unchanged when local, else ``<cache>/models--org--name/snapshots/<commit>``.

    Raises:
        FileNotFoundError / OSError: a local path with nothing there, or a broken symbolic link
            (``check_local_path``).
        ImportError: a hub id, and huggingface_hub is not installed.
        OSError: the repository, revision or a needed file cannot be found or fetched; the
            message names the id, the revision, what was looked for and how to fix it.

    Examples:
        >>> folder = resolve_pretrained("facebook/data2vec-audio-base-960h", ["preprocessor_config.json"])
    """
    path = os.fspath(path_or_id)
    if is_local(path):
        if not os.path.exists(path):
            check_local_path(path)
        return path
    hub = _hub()
    selector = select if callable(select) else files(*select)
    where = f"{path!r} (revision {revision or 'main'!r})"
    try:
        hub.utils.validate_repo_id(path)
    except ValueError as err:
        message = f"{path!r} is neither a local file or directory nor a valid Hugging Face Hub id ({err})"
        raise OSError(message) from None

    offline = bool(local_files_only or hub.constants.HF_HUB_OFFLINE)
    if offline and force_download:
        raise ValueError(f"{where}: force_download=True needs the Hub, but offline mode is on (HF_HUB_OFFLINE=1 or "
                         "local_files_only=True); drop one of them")
    options = dict(revision=revision, cache_dir=cache_dir, token=token)
    available, offline = _repository_files(hub, path, offline, where, options)
    try:
        wanted = list(selector(available))
    except HubFileMissing as err:
        raise OSError(f"{where}: {err}. {_fix_for_missing(path, offline)}") from None

    folder = None
    fetched: list[str] = []
    while wanted:
        name = wanted.pop(0)
        if name in fetched:
            continue
        local = _download(hub, path, name, where, offline, dict(options, force_download=force_download))
        fetched.append(name)
        here = os.path.dirname(local)
        if folder is None:
            folder = here
        elif here != folder:  # a push landed between two downloads
            raise OSError(f"{where} changed while downloading; try again, or pin revision=<commit hash>")
        if follow is not None:
            wanted += list(follow(name, local))
    if folder is None:
        raise ValueError("resolve_pretrained: the selector chose no files")
    return folder


def _repository_files(hub, repo_id: str, offline: bool, where: str, options: dict) -> tuple[set[str], bool]:
    """The repository's top-level file names: listed on the Hub, or (offline, or when the Hub
    cannot be reached) those cached for the revision. Also says whether the cache was used."""
    if not offline:
        try:
            api = hub.HfApi()  # made per call, so that the endpoint is read now
            listing = api.list_repo_files(repo_id, revision=options["revision"], token=options["token"])
            return {name for name in listing if "/" not in name}, False
        except hub.errors.RevisionNotFoundError as err:
            raise _hub_error(err, repo_id, where, "the revision") from None
        except hub.errors.HfHubHTTPError as err:
            # not found / gated / server trouble: a cached copy still serves (as snapshot_download does)
            remote_error = err
        except (OSError, ConnectionError) as err:  # no connection: the cache decides
            remote_error = err
    else:
        remote_error = None
    try:
        folder = hub.snapshot_download(
            repo_id, revision=options["revision"], cache_dir=options["cache_dir"], local_files_only=True
        )
    except hub.errors.LocalEntryNotFoundError as err:
        if isinstance(remote_error, hub.errors.HfHubHTTPError):
            raise _hub_error(remote_error, repo_id, where, "the repository") from None
        raise _hub_error(remote_error or err, repo_id, where, "the repository") from None
    names = {n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))}
    return names, True


def _download(hub, repo_id: str, name: str, where: str, offline: bool, options: dict) -> str:
    try:
        return hub.hf_hub_download(repo_id, name, local_files_only=offline, **options)
    except (hub.errors.HfHubHTTPError, OSError, ValueError) as err:
        raise _hub_error(err, repo_id, where, name) from None


def _fix_for_missing(repo_id: str, offline: bool) -> str:
    if offline:
        return ("Offline (HF_HUB_OFFLINE=1, local_files_only=True or the Hub unreachable) only cached files are "
                "used: connect and drop offline mode to download it, or point cache_dir / HF_HUB_CACHE at a cache "
                "that has it")
    return f"See https://huggingface.co/{repo_id}/tree/main for what the repository holds, or pick another revision"


def _hub_error(err: BaseException, repo_id: str, where: str, looked_for: str) -> OSError:
    """huggingface_hub's exception -> an OSError naming the id, the revision, what was looked
    for and the fix. Classes are tested most specific first (GatedRepoError is a
    RepositoryNotFoundError; LocalEntryNotFoundError an EntryNotFoundError)."""
    errors = _hub().errors
    offline_types = (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)
    if isinstance(err, errors.GatedRepoError):
        message = (f"{where} is a gated repository: accept its conditions at https://huggingface.co/{repo_id}, "
                   "then log in (`hf auth login`) or pass token=... / set HF_TOKEN")
    elif isinstance(err, errors.RepositoryNotFoundError):
        message = (f"{where} is neither a local directory nor a repository on the Hugging Face Hub: check the "
                   "id, or, for a private repository, log in (`hf auth login`) or pass token=...")
    elif isinstance(err, errors.RevisionNotFoundError):
        message = (f"{where}: the revision does not exist in the repository; pick another revision (a branch, tag "
                   f"or commit hash, see https://huggingface.co/{repo_id}/commits/main)")
    elif isinstance(err, offline_types):
        message = (f"{where}: {looked_for} is not in the local hub cache, and the Hub cannot be reached (offline "
                   "mode: HF_HUB_OFFLINE=1 or local_files_only=True, or no connection). Connect and drop offline "
                   "mode to download it, or point cache_dir / HF_HUB_CACHE at a cache that has it")
    elif isinstance(err, errors.EntryNotFoundError):
        message = (f"{where} has no file {looked_for}; see https://huggingface.co/{repo_id}/tree/main for what "
                   "the repository holds, or pick another revision")
    else:
        message = f"{where}: fetching {looked_for} from the Hugging Face Hub failed ({type(err).__name__}: {err})"
    return OSError(message)


__all__ = [
    "HUB_OPTIONS",
    "HubFileMissing",
    "check_local_path",
    "files",
    "is_local",
    "pop_hub_options",
    "resolve_pretrained",
    "torch_available",
]
