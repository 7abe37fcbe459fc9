"""A Hugging Face Hub cache built on disk, for tests that load by hub id without a network.

``make_hub_cache(root, "org/name", {"config.json": b"..."})`` lays files out as
``huggingface_hub`` (and transformers) keep them: ``models--org--name/blobs/<hash>`` holding the
bytes, ``snapshots/<commit>/<file>`` relative links into ``blobs``, and ``refs/<branch>`` holding
the commit hash. Point ``cache_dir=`` (or ``HF_HUB_CACHE``) at ``root`` and set
``HF_HUB_OFFLINE=1``: both libraries then serve the repository from here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def repo_folder(root: str | os.PathLike, repo_id: str) -> Path:
    return Path(root) / ("models--" + repo_id.replace("/", "--"))


def make_hub_cache(
    root: str | os.PathLike,
    repo_id: str,
    files: dict[str, bytes],
    commit: str | None = None,
    refs: tuple[str, ...] = ("main",),
) -> Path:
    """Add one snapshot of ``repo_id`` holding ``files`` (name -> bytes) to the cache at ``root``.

    Args:
        root: the cache folder (what ``HF_HUB_CACHE`` / ``cache_dir`` name).
        repo_id: ``"org/name"``.
        files: file name -> content.
        commit: the snapshot's 40-hex commit hash (default: derived from the contents).
        refs: branches (or tags) pointed at this commit; pass ``()`` for an older snapshot
            reachable only by ``revision=<commit>``.

    Returns:
        The snapshot folder ``models--org--name/snapshots/<commit>``.
    """
    if commit is None:
        digest = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode())
        commit = digest.hexdigest()
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        raise ValueError(f"commit must be 40 lowercase hex digits, got {commit!r}")
    repo = repo_folder(root, repo_id)
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        # the hub names blobs by their git or LFS hash; any content hash keeps the layout
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def folder_files(folder: str | os.PathLike) -> dict[str, bytes]:
    """Every file of a checkpoint folder as name -> bytes (to put it in a cache)."""
    folder = Path(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
