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


def loopback_only(monkeypatch) -> None:
    """Make any name lookup other than the loopback's fail in this process (a network guard)."""
    import socket

    lookup = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1", None):
            raise OSError(f"a test tried to reach {host!r}; tests never touch the network")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def serve_offline(monkeypatch, root: str | os.PathLike | None = None) -> None:
    """Make huggingface_hub (and transformers) work offline, from the cache at ``root`` if given.

    huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` when it is imported, so the
    variables are set for subprocesses and the already-read constants are patched for this one;
    in offline mode huggingface_hub refuses every request before it is sent, and a name lookup
    other than the loopback's fails.
    """
    import huggingface_hub.constants as constants

    loopback_only(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    if root is not None:
        monkeypatch.setenv("HF_HUB_CACHE", str(root))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:
        return
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", True, raising=False)


class FakeHub:
    """A Hugging Face Hub answering on 127.0.0.1 (loopback only): the few HTTP routes that
    ``list_repo_files`` and ``hf_hub_download`` use, with the Hub's error headers.

    ``repos`` maps ``"org/name"`` to ``{revision: files}`` (revision names or commit hashes);
    ``gated`` lists repositories that answer 403 GatedRepo without an ``Authorization`` header.
    ``requests`` records ``(method, path)`` of every request. Use as a context manager and run
    the client in a process started with ``HF_ENDPOINT=<url>`` (huggingface_hub reads the
    endpoint once, at import).
    """

    def __init__(self, repos: dict[str, dict[str, dict[str, bytes]]], gated: tuple[str, ...] = ()):
        import http.server
        import threading

        self.repos, self.gated, self.requests = repos, gated, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def commit_of(revision: str, files: dict[str, bytes]) -> str:
        if len(revision) == 40:
            return revision
        digest = repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items()))
        return hashlib.sha1(digest.encode()).hexdigest()

    def _answer(self, handler, body: bool) -> None:
        import json
        from urllib.parse import unquote, urlsplit

        path = urlsplit(handler.path).path
        self.requests.append((handler.command, path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            repo_id, revision, filename = "/".join(parts[2:4]), parts[5], None
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        else:
            return self._error(handler, 404, "RepoNotFound")
        if repo_id not in self.repos:
            return self._error(handler, 401, "RepoNotFound")
        if repo_id in self.gated and "authorization" not in {k.lower() for k in handler.headers.keys()}:
            return self._error(handler, 403, "GatedRepo")
        revisions = self.repos[repo_id]
        if revision not in revisions:
            return self._error(handler, 404, "RevisionNotFound")
        files = revisions[revision]
        commit = self.commit_of(revision, files)
        if filename is None:
            listing = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                       for n, d in sorted(files.items())]
            return self._send(handler, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
        if filename not in files:
            return self._error(handler, 404, "EntryNotFound", commit)
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        self._send(handler, 200, data, headers, body)

    def _error(self, handler, status: int, code: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": code}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(handler, status, b"", headers, handler.command == "GET")

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)
