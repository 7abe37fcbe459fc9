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


def serve_offline(monkeypatch, root: str | os.PathLike | None = None) -> None:
    """Make huggingface_hub (and transformers) work offline, from the cache at ``root`` if given.

    huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when it is imported, so the
    variables are set for subprocesses and the already-read constants are patched for this one;
    the endpoint points at a closed local port, so nothing can reach the real Hub.
    """
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    if root is not None:
        monkeypatch.setenv("HF_HUB_CACHE", str(root))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:
        return
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", True, raising=False)
