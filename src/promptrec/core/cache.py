"""Where promptrec keeps what it downloads, converts or computes once: datasets, converted
pretrained models, item text embeddings."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$PROMPTREC_CACHE``, else ``$XDG_CACHE_HOME/promptrec``, else ``~/.cache/promptrec``."""
    configured = os.environ.get("PROMPTREC_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "promptrec"


def directory_version(directory: str | Path) -> str:
    """A short content-derived version of a directory: every file's path, size and mtime."""
    directory = Path(directory)
    entries = sorted(
        f"{p.relative_to(directory)}:{s.st_size}:{s.st_mtime_ns}"
        for p in directory.rglob("*") if p.is_file() and (s := p.stat())
    )
    key = f"{directory.resolve()}|{'|'.join(entries)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def runtime_cache(runtime: str, version: str) -> Path:
    """Where the graph for ``runtime`` (e.g. an ONNX export) of the model directory with this
    :func:`directory_version` is kept: a retrained model has another version and is exported afresh."""
    return default_cache_root() / "runtimes" / runtime / version
