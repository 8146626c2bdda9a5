"""Where promptrec keeps what it downloads, converts or computes once: datasets, converted
pretrained models, item text embeddings."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """``$PROMPTREC_CACHE``, else ``$XDG_CACHE_HOME/promptrec``, else ``~/.cache/promptrec``."""
    configured = os.environ.get("PROMPTREC_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "promptrec"
