"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

Also the folder staging that the tools writing a whole folder share (d2v-convert, d2v-export,
the fairseq converter, Keras' SavedModel writer): ``fresh_sibling`` makes the staging folder
beside the destination, ``install`` renames the finished one into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: str) -> None:
    """mkstemp files are private (0600); give written files the usual mode (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_umask())


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync and rename it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _make_readable(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Run ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_files_transactionally(plan: list[tuple[str, Callable[[str], None]]]) -> None:
    """Write several files so that, on any exception, every target is left as it was.

    ``plan`` lists ``(target path, writer(tmp_path))``. All files are first written and fsynced
    beside their targets; then each target is swapped in (in plan order) with a hard-linked
    backup of the old file, and if anything fails the swapped ones are rolled back.
    """
    staged: list[tuple[str, str]] = []
    try:
        for target, writer in plan:
            directory = os.path.dirname(os.path.abspath(target))
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
            os.close(fd)
            staged.append((tmp, target))
            writer(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _make_readable(tmp)
        _commit(staged)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _backup_of(target: str) -> str | None:
    if not os.path.exists(target):
        return None
    directory = os.path.dirname(os.path.abspath(target))
    fd, backup = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".bak", dir=directory)
    os.close(fd)
    os.unlink(backup)
    try:
        os.link(target, backup)
    except OSError:  # no hard links here: fall back to a copy
        shutil.copy2(target, backup)
    return backup


def _commit(staged: list[tuple[str, str]]) -> None:
    done: list[tuple[str, str | None]] = []
    try:
        for tmp, target in staged:
            backup = _backup_of(target)
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:  # this target was not touched: drop its backup only
                    os.unlink(backup)
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        raise
    for _, backup in done:
        if backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
    for directory in {os.path.dirname(os.path.abspath(t)) for _, t in staged}:
        fsync_dir(directory)


# ------------------------------------------------------------------------------ staged folders
def fresh_sibling(dst: str, tag: str) -> str:
    """A new, empty directory ``DST.<tag>-XXXXXXXX`` beside ``dst`` (created with the umask)."""
    parent, base = os.path.split(dst)
    while True:
        path = os.path.join(parent, f"{base}.{tag}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def copy_file(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` and fsync it; symlinks are followed (HF cache snapshots are
    links into blobs)."""
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def install(tmp: str, dst: str, overwrite: bool) -> None:
    """Move the finished folder ``tmp`` to ``dst``; an old ``dst`` is moved aside first and
    removed last, so ``dst`` is never missing or half-written.

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    if not os.path.lexists(dst):
        os.rename(tmp, dst)
        return
    if not overwrite:
        raise FileExistsError(f"destination {dst} already exists; pass --overwrite to replace it")
    old = fresh_sibling(dst, "old")
    os.rmdir(old)  # only its unique name is needed
    os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old, dst)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(old)


def same_or_nested(a: str, b: str) -> bool:
    """Whether the folders ``a`` and ``b`` are the same or one lies inside the other."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file when it is not one."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{os.fspath(path)} is not valid JSON: {e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{os.fspath(path)} is not a JSON text file (binary data: a weight file?)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)} must hold a JSON object, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------ command lines
# Exit statuses shared by d2v's command-line tools (d2v-convert, d2v-export).
EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in "invalid ... value"
    return parse


# argparse ``type=`` for integer options: seeds and counts that may be 0, and counts that may not.
non_negative_int = _int_at_least(0, "a non-negative integer")
positive_int = _int_at_least(1, "a positive integer")


def run_as_script(module_name: str) -> None:
    """Exit with the status of ``module_name.main()``, taken from the module's canonical import.

    ``python -m pkg.mod`` runs the file as a second module named ``__main__``; registries filled
    at import time by other modules (the export formats d2v_torch.export and d2v_tf.export
    register) live in the canonical ``pkg.mod``, so the script must run that copy's ``main``.
    """
    import importlib
    import sys

    main = importlib.import_module(module_name).main
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())


def written_summary(destination: str, what: str, files) -> str:
    """The closing line of a tool that wrote a folder: where, what, and which files."""
    return f"wrote {destination} ({what}): " + ", ".join(os.path.basename(f) for f in files)
