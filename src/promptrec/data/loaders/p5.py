"""The S3-Rec / P5 sequence format (Amazon Beauty, Sports_and_Outdoors, ...).

A dataset directory holds:

* ``<Name>.txt``: one user per line, ``user item item ...``, 1-based integers, chronological;
* ``<Name>_item2attributes.json``: ``{item: [attribute, ...]}`` with the same integers;
* ``p5_datamaps.json``: ``id2user`` (reviewerID), ``id2item`` (ASIN), ``id2attribute`` (names);
* optionally ``Amazon_<Name>.item``: RecBole-style item metadata keyed by ASIN (titles etc.).

The integers of the sequence file were assigned in order of first appearance while walking every
user's full sequence, test items included, so they leak the split. This loader therefore maps them
straight back to the raw ids of the datamaps and never exposes them; the item table is sorted by
ASIN so that not even its row order carries the leak.
"""

from __future__ import annotations

import ast
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..base import LOADERS, DataFormatError, InteractionData

DATAMAPS = "p5_datamaps.json"
ATTRIBUTES_SUFFIX = "_item2attributes.json"
_SPACE = re.compile(r"\s+")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


@dataclass(frozen=True)
class P5Files:
    sequences: Path
    attributes: Path | None
    datamaps: Path
    item_meta: Path | None


@LOADERS.register("p5")
def load_p5(path: str | Path, name: str | None = None) -> InteractionData:
    """Load a P5/S3-Rec dataset directory, e.g. ``load_p5("../shared/data/beauty")``.

    Users and items carry their raw Amazon ids; ``timestamp`` is the position in the user's
    sequence (0, 1, 2, ...) because the format keeps only the order; ``rating`` is NaN.
    ``path`` may also be the sequence ``.txt`` file itself.
    """
    files = find_p5_files(path)
    maps = _read_datamaps(files.datamaps)
    interactions = read_sequences(files.sequences, maps["id2user"], maps["id2item"])
    items = _item_table(files, maps)
    return InteractionData(
        interactions=interactions,
        items=items,
        users=None,
        name=name or files.sequences.parent.name,
        meta={"loader": "p5", "path": str(files.sequences.parent), "timestamp": "position"},
    )


def find_p5_files(path: str | Path) -> P5Files:
    """Locate the files of one dataset; the sequence file is the one named like the attributes."""
    path = Path(path)
    if path.is_file():
        directory, sequences = path.parent, path
    elif path.is_dir():
        directory, sequences = path, None
    else:
        raise DataFormatError(path, "no such file or directory")
    attributes = _single(directory, f"*{ATTRIBUTES_SUFFIX}", required=False)
    if sequences is None:
        sequences = _sequence_file(directory, attributes)
    datamaps = directory / DATAMAPS
    if not datamaps.is_file():
        raise DataFormatError(directory, f"missing {DATAMAPS} (raw user and item ids)")
    item_meta = _single(directory, "Amazon_*.item", required=False)
    return P5Files(sequences, attributes, datamaps, item_meta)


def _single(directory: Path, pattern: str, required: bool) -> Path | None:
    found = sorted(directory.glob(pattern))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataFormatError(directory, f"several files match {pattern}: {names}")
    if not found and required:
        raise DataFormatError(directory, f"no file matches {pattern}")
    return found[0] if found else None


def _sequence_file(directory: Path, attributes: Path | None) -> Path:
    if attributes is not None:
        named = directory / (attributes.name[: -len(ATTRIBUTES_SUFFIX)] + ".txt")
        if named.is_file():
            return named
    found = _single(directory, "*.txt", required=True)
    assert found is not None
    return found


def _read_datamaps(path: Path) -> dict[str, dict[str, str]]:
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON: {err.msg}", err.lineno) from None
    missing = [k for k in ("id2user", "id2item") if k not in maps]
    if missing:
        raise DataFormatError(path, f"missing key(s) {missing}")
    keys = ("id2user", "id2item", "id2attribute")
    return {k: {str(i): str(v) for i, v in maps.get(k, {}).items()} for k in keys}


def read_sequences(path: Path, id2user: dict[str, str], id2item: dict[str, str]) -> pd.DataFrame:
    """Read ``user item item ...`` lines into interaction rows keyed by raw ids."""
    users: list[str] = []
    items: list[str] = []
    positions: list[np.ndarray] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataFormatError(path, "a user line needs at least one item", line_no)
            user = id2user.get(fields[0])
            if user is None:
                raise DataFormatError(path, f"user {fields[0]!r} is not in id2user", line_no)
            if user in seen:
                raise DataFormatError(
                    path, f"user {fields[0]!r} already has a sequence on line {seen[user]}", line_no
                )
            seen[user] = line_no
            try:
                items.extend(id2item[token] for token in fields[1:])
            except KeyError as err:
                raise DataFormatError(path, f"item {err.args[0]!r} is not in id2item", line_no) from None
            users.extend([user] * (len(fields) - 1))
            positions.append(np.arange(len(fields) - 1, dtype=float))
    if not users:
        raise DataFormatError(path, "no interactions (empty file)")
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": np.concatenate(positions),
            "rating": np.nan,
        }
    )


def _item_table(files: P5Files, maps: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Every item of ``id2item``, sorted by ASIN, with whatever text the directory offers."""
    asins = sorted(maps["id2item"].values())
    items = pd.DataFrame(index=pd.Index(asins, name="item_id"))
    if files.item_meta is not None:
        items = items.join(read_item_meta(files.item_meta), how="left")
        if "categories" in items:
            items["categories"] = items["categories"].map(lambda v: v if isinstance(v, list) else [])
        return items
    if files.attributes is not None:
        names = _attribute_names(files.attributes, maps)
        categories = [names.get(a, []) for a in asins]
        items["categories"] = pd.Series(categories, index=items.index, dtype=object)
    return items


def _attribute_names(path: Path, maps: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """ASIN -> attribute names (brand and category names mixed; the json does not say which)."""
    raw: dict[str, list[Any]] = json.loads(path.read_text(encoding="utf-8"))
    id2item, id2attribute = maps["id2item"], maps["id2attribute"]
    names: dict[str, list[str]] = {}
    for item, attribute_ids in raw.items():
        if str(item) not in id2item:
            raise DataFormatError(path, f"item {item!r} is not in id2item")
        cleaned = (_clean_text(id2attribute.get(str(a))) for a in attribute_ids)
        names[id2item[str(item)]] = list(dict.fromkeys(n for n in cleaned if n))
    return names


def read_item_meta(path: Path) -> pd.DataFrame:
    """Read a RecBole ``.item`` file of Amazon metadata, indexed by ASIN.

    A real CSV parser is needed: one title is a quoted field with an embedded newline, and two
    quoted titles hold a tab.
    """
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quotechar='"')
    raw.columns = [c.split(":", 1)[0] for c in raw.columns]
    if "item_id" not in raw.columns:
        raise DataFormatError(path, f"no item_id column; header is {list(raw.columns)}", 1)
    meta = pd.DataFrame(index=pd.Index(raw["item_id"].str.strip(), name="item_id"))
    if meta.index.has_duplicates:
        dup = meta.index[meta.index.duplicated()][0]
        raise DataFormatError(path, f"duplicate item_id {dup!r}")
    for column in ("title", "brand", "sales_type"):
        if column in raw:
            texts = [_clean_text(v) for v in raw[column]]
            meta[column] = pd.Series(texts, index=meta.index, dtype=object)
    if "categories" in raw:
        meta["categories"] = pd.Series(
            [parse_category_list(v) for v in raw["categories"]], index=meta.index, dtype=object
        )
    for column in ("price", "sales_rank"):
        if column in raw:
            meta[column] = pd.to_numeric(raw[column].to_numpy(), errors="coerce")
    return meta


def parse_category_list(text: str) -> list[str]:
    """``'Beauty', 'Fragrance', "Women's"`` -> ``["Beauty", "Fragrance", "Women's"]``.

    The field is the body of a Python tuple of string literals (double quotes where a name holds
    an apostrophe), so it is read as one rather than split on commas, which names contain. Without
    backslash escapes a regular expression reads it exactly, and much faster than ``ast``.
    """
    if not text.strip():
        return []
    if "\\" in text:
        try:
            values = [str(v) for v in ast.literal_eval(f"[{text}]")]
        except (SyntaxError, ValueError):
            values = [text]
    else:
        values = [single or double for single, double in _QUOTED.findall(text)] or [text]
    cleaned = (_clean_text(v) for v in values)
    return list(dict.fromkeys(v for v in cleaned if v))


def _clean_text(value: object) -> str | None:
    """Unescape HTML entities and collapse whitespace; empty or missing text becomes None.

    Titles and names end up in language-model prompts, where an embedded newline, a tab or a
    literal ``&amp;`` only adds noise.
    """
    if not isinstance(value, str):
        return None
    if "&" in value:
        value = html.unescape(value)
    text = _SPACE.sub(" ", value).strip()
    return text or None


__all__ = [
    "P5Files",
    "find_p5_files",
    "load_p5",
    "parse_category_list",
    "read_item_meta",
    "read_sequences",
]
