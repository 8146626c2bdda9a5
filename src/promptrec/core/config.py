"""The config file base: strict pydantic models (unknown keys are rejected, values frozen) that
are read from YAML or JSON (or a shipped recipe by name), written back as plain data and copied
with dotted-key overrides; the data section every top-level config shares; the ``--set`` syntax.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    loader: str = Field("ml-100k", description="registered data loader: p5, ml-100k, movielens, tabular")
    path: str | None = Field(
        None, description="dataset directory or file; for ml-100k, empty = the cached default copy"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="extra loader arguments")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.tuning={method: lora}"]`` -> ``{"train.epochs": 3, ...}``:
    the ``--set`` syntax of the CLI and the benchmark scripts. Values are YAML, except that
    ``5e-4`` (a string to PyYAML, which wants ``5.0e-4``) is a float."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(text)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def recipes() -> list[str]:
    """Names of the recipes shipped with promptrec (``src/promptrec/recipes/*.yaml``)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("promptrec.recipes").iterdir() if p.name.endswith(".yaml"))


def recipe_path(path: str | Path) -> Path:
    """``path`` itself if it exists, else the shipped recipe of that name (``sequence_lm``)."""
    if Path(path).exists() or not str(path).isidentifier():
        return Path(path)
    packaged = resources.files("promptrec.recipes").joinpath(f"{path}.yaml")
    if not packaged.is_file():
        raise FileNotFoundError(f"{path}: no such file, nor a shipped recipe ({', '.join(recipes())})")
    return Path(str(packaged))


class FileConfig(_Strict):
    """A top-level config: read from YAML or JSON, written back as plain data, copied with
    dotted-key overrides, validated like a file each time."""

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """From a YAML or JSON file, or a recipe shipped with promptrec by name (:func:`recipe_path`)."""
        path = recipe_path(path)
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.model_validate(raw or {})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def update(self, overrides: dict[str, Any]) -> Self:
        """A copy with dotted-key overrides (``{"train.epochs": 3}``), validated like a file."""
        raw = self.to_dict()
        for key, value in overrides.items():
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                if p not in node or not isinstance(node[p], dict):
                    raise ValueError(f"unknown config key {key!r}")
                node = node[p]
            if leaf not in node and not isinstance(node, dict):
                raise ValueError(f"unknown config key {key!r}")
            node[leaf] = value
        return type(self).model_validate(raw)
