"""The package's architecture: the import contracts of ``.importlinter`` (layers, model families
independent of each other, no import cycles), checked on this checkout's source with import-linter.

``lint-imports`` at the repository root runs the same check and prints which import breaks what.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"

pytest.importorskip("importlinter", reason="import-linter comes with the dev extra")


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the ``promptrec`` package under ``src`` (not whichever one is installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(CONFIG), "--no-cache"],
        cwd=src.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_import_contracts_are_kept() -> None:
    res = lint_imports(ROOT / "src")
    assert res.returncode == 0, f"import contracts broken (see .importlinter):\n{res.stdout}\n{res.stderr}"
    assert "0 broken" in res.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """The check reads the given source: an import of the CLI from the bottom layer breaks it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "promptrec", src / "promptrec", ignore=shutil.ignore_patterns("__pycache__"))
    registry = src / "promptrec" / "core" / "registry.py"
    registry.write_text(registry.read_text() + "\n\ndef _upward():\n    from ..cli import app  # noqa: F401\n")
    res = lint_imports(src)
    assert res.returncode != 0
    assert "promptrec.core.registry -> promptrec.cli" in res.stdout
