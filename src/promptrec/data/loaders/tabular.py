"""The user's own data: a DataFrame or a .csv / .tsv / .parquet file of interactions.

Documented columns (anything else is rejected, so a typo never silently drops a field):

* interactions: ``user_id``, ``item_id`` (required), ``timestamp``, ``rating`` (numbers);
* items (optional): ``item_id`` (required), ``title``, ``categories`` (a list, or a string
  separated by ``|``), ``brand``, ``price``;
* users (optional): ``user_id`` (required) and any attribute columns.

``columns`` renames the user's names to these, e.g. ``{"uid": "user_id", "ts": "timestamp"}``;
it applies to every table and names a table does not have are ignored.

Errors are :class:`DataFormatError` naming the file, the physical line (1-based, header = line 1)
and the problem. Text files are checked with the ``csv`` module first, because pandas neither
reports physical line numbers (quoted fields may span lines) nor complains about short rows.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..base import LOADERS, DataFormatError, InteractionData

INTERACTION_FIELDS = ("user_id", "item_id", "timestamp", "rating")
ITEM_FIELDS = ("item_id", "title", "categories", "brand", "price")
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")

TableSource = pd.DataFrame | str | os.PathLike[str]


@dataclass
class Table:
    """A table read as it is, plus where each row came from, for error messages."""

    frame: pd.DataFrame
    source: str
    lines: np.ndarray | None = None  # physical 1-based line of each row (text files only)
    header: list[str] | None = None  # the header as written (pandas renames duplicates)
    header_line: int | None = None

    def error(self, row: int, problem: str) -> DataFormatError:
        if self.lines is not None:
            return DataFormatError(self.source, problem, int(self.lines[row]))
        return DataFormatError(self.source, f"row {row}: {problem}")


@LOADERS.register("tabular")
def load_tabular(
    path_or_df: TableSource,
    items: TableSource | None = None,
    users: TableSource | None = None,
    columns: Mapping[str, str] | None = None,
    name: str = "custom",
) -> InteractionData:
    """Load interactions (and optional item and user tables) in the documented column names.

    Without a ``timestamp`` column the file order is the chronological order.
    """
    mapping = _check_mapping(columns)
    table = read_table(path_or_df, INTERACTION_FIELDS, ("user_id", "item_id"), mapping, "interactions")
    if len(table.frame) == 0:
        raise DataFormatError(table.source, "no interactions (only a header)")
    interactions = pd.DataFrame(
        {
            "user_id": _ids(table, "user_id"),
            "item_id": _ids(table, "item_id"),
        }
    )
    if "timestamp" in table.frame:
        interactions["timestamp"] = _numbers(table, "timestamp", allow_empty=False)
    if "rating" in table.frame:
        interactions["rating"] = _numbers(table, "rating", allow_empty=True)
    return InteractionData(
        interactions=interactions,
        items=None if items is None else read_items(items, mapping),
        users=None if users is None else read_users(users, mapping),
        name=name,
        meta={"loader": "tabular", "source": table.source, "has_timestamp": "timestamp" in table.frame},
    )


def read_items(source: TableSource, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Item table indexed by ``item_id`` with the documented columns present in ``source``."""
    table = read_table(source, ITEM_FIELDS, ("item_id",), _check_mapping(columns), "items")
    out = pd.DataFrame(index=pd.Index(_ids(table, "item_id"), name="item_id"))
    _reject_duplicates(table, out.index, "item_id")
    for column in ("title", "brand"):
        if column in table.frame:
            texts = [_text(v) for v in table.frame[column]]
            out[column] = pd.Series(texts, index=out.index, dtype=object)
    if "categories" in table.frame:
        out["categories"] = pd.Series(
            [_categories(v) for v in table.frame["categories"]], index=out.index, dtype=object
        )
    if "price" in table.frame:
        out["price"] = _numbers(table, "price", allow_empty=True)
    return out


def read_users(source: TableSource, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """User table indexed by ``user_id``; every other column is kept as a free-form attribute."""
    table = read_table(source, None, ("user_id",), _check_mapping(columns), "users")
    index = pd.Index(_ids(table, "user_id"), name="user_id")
    _reject_duplicates(table, index, "user_id")
    users = table.frame.drop(columns="user_id").set_axis(index)
    if table.lines is not None:
        users = users.apply(_numeric_if_all_numbers)
    return users


def _numeric_if_all_numbers(values: pd.Series) -> pd.Series:
    """Text files give strings; an attribute such as age becomes numbers when it is all numbers.

    Codes with a leading zero (zip codes, ids) stay text: as numbers they would lose the zero.
    """
    present = values.str.strip() != ""
    if not present.any() or values[present].str.strip().str.match(r"[+-]?0\d").any():
        return values
    converted = pd.to_numeric(values.where(present, None), errors="coerce")
    return converted if converted[present].notna().all() else values


def read_table(
    source: TableSource,
    allowed: Sequence[str] | None,
    required: Sequence[str],
    columns: Mapping[str, str],
    what: str,
) -> Table:
    """Read a DataFrame or file and check its header; ``allowed=None`` accepts any extra column."""
    if isinstance(source, pd.DataFrame):
        table = Table(_index_as_column(source, required), f"<{what} DataFrame>")
    else:
        table = _read_file(Path(source))
    names = table.header if table.header is not None else [str(c) for c in table.frame.columns]
    _check_header(table.source, names, allowed, required, columns, table.header_line)
    table.frame = table.frame.set_axis([columns.get(n, n) for n in names], axis=1)
    return table


def _index_as_column(frame: pd.DataFrame, required: Sequence[str]) -> pd.DataFrame:
    """A table indexed by its key (as :class:`InteractionData` keeps items) gets it back as a column."""
    if frame.index.name in required and frame.index.name not in frame.columns:
        return frame.reset_index()
    return frame.reset_index(drop=True)


def _check_header(
    source: str,
    names: list[str],
    allowed: Sequence[str] | None,
    required: Sequence[str],
    columns: Mapping[str, str],
    line: int | None,
) -> None:
    seen: dict[str, str] = {}
    for raw in names:
        if raw in seen:
            raise DataFormatError(source, f"duplicate column name {raw!r} in the header", line)
        mapped = columns.get(raw, raw)
        if mapped in seen.values():
            other = next(k for k, v in seen.items() if v == mapped)
            raise DataFormatError(source, f"columns {other!r} and {raw!r} both give {mapped!r}", line)
        seen[raw] = mapped
    if allowed is not None:
        unknown = [raw for raw, mapped in seen.items() if mapped not in allowed]
        if unknown:
            raise DataFormatError(
                source,
                f"unknown column(s) {unknown}; allowed: {', '.join(allowed)} "
                "(rename yours with columns={'your_name': 'allowed_name'})",
                line,
            )
    missing = [c for c in required if c not in seen.values()]
    if missing:
        raise DataFormatError(source, f"missing required column(s) {missing}; found {names}", line)


def _check_mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(columns or {})
    documented = set(INTERACTION_FIELDS) | set(ITEM_FIELDS)
    wrong = {k: v for k, v in mapping.items() if v not in documented}
    if wrong:
        raise ValueError(f"columns maps to undocumented name(s) {wrong}; use {sorted(documented)}")
    return mapping


def _read_file(path: Path) -> Table:
    if not path.is_file():
        raise DataFormatError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several unrelated types for a bad file
            raise DataFormatError(path, f"cannot read parquet: {err}") from None
        return Table(frame, str(path))
    if suffix not in DELIMITERS:
        raise DataFormatError(path, f"unsupported file type {suffix!r}; use .csv, .tsv or .parquet")
    return _read_delimited(path, DELIMITERS[suffix])


def _read_delimited(path: Path, sep: str) -> Table:
    header, header_line, lines = scan_delimited(path, sep)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, ValueError) as err:
        raise DataFormatError(path, f"cannot parse: {err}") from None
    if len(frame) != len(lines):
        raise DataFormatError(path, f"read {len(frame)} rows but found {len(lines)} records")
    return Table(frame, str(path), lines, header, header_line)


def scan_delimited(path: Path, sep: str) -> tuple[list[str], int, np.ndarray]:
    """Check every record's field count; return the header, its physical line and each data row's.

    Blank lines are skipped, as pandas does. The header must be the first non-blank line.
    """
    starts: list[int] = []
    header: list[str] = []
    header_line = 0
    end = 0
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=sep, strict=True)
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise DataFormatError(path, f"malformed quoting ({err})", start) from None
            except UnicodeDecodeError:
                raise DataFormatError(path, "not UTF-8 text", start) from None
            end = reader.line_num
            if not row:
                continue
            if not header_line:
                header, header_line = row, start
                continue
            if len(row) != len(header):
                raise DataFormatError(
                    path,
                    f"expected {len(header)} fields as in the header (line {header_line}), found {len(row)}",
                    start,
                )
            starts.append(start)
    if not header_line:
        raise DataFormatError(path, "empty file; expected a header line naming the columns")
    return [h.strip() for h in header], header_line, np.asarray(starts, dtype=np.int64)


def _ids(table: Table, column: str) -> np.ndarray:
    values = table.frame[column]
    text = values.astype(str).str.strip()
    empty = (values.isna() | (text == "")).to_numpy()
    if empty.any():
        raise table.error(int(empty.argmax()), f"empty {column}")
    return text.to_numpy(dtype=object)


def _numbers(table: Table, column: str, allow_empty: bool) -> np.ndarray:
    """Column as floats; the first non-numeric (or, unless allowed, empty) value is an error."""
    values = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        return _seconds(values)
    missing = values.isna().to_numpy()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        text = values.astype(str).str.strip()
        missing = missing | (text == "").to_numpy()
        converted = pd.to_numeric(text.where(~missing, None), errors="coerce").to_numpy(dtype=float)
    else:
        converted = values.to_numpy(dtype=float)
    bad = ~missing & ~np.isfinite(converted)
    if bad.any():
        row = int(bad.argmax())
        raise table.error(row, f"non-numeric {column} {values.iloc[row]!r}")
    if not allow_empty and missing.any():
        raise table.error(int(missing.argmax()), f"empty {column}")
    return np.where(missing, np.nan, converted)


def _seconds(values: pd.Series) -> np.ndarray:
    """Datetimes (DataFrame input) as seconds since the epoch; naive times are taken as UTC."""
    stamps = pd.to_datetime(values, utc=True)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=float)


def _reject_duplicates(table: Table, index: pd.Index, column: str) -> None:
    duplicated = index.duplicated()
    if duplicated.any():
        row = int(duplicated.argmax())
        raise table.error(row, f"duplicate {column} {index[row]!r}")


def _text(value: Any) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _categories(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        parts = [str(v) for v in value if v is not None]
    elif isinstance(value, str):
        parts = value.split("|")
    else:
        parts = []
    return [p.strip() for p in parts if p.strip()]


__all__ = [
    "INTERACTION_FIELDS",
    "ITEM_FIELDS",
    "Table",
    "load_tabular",
    "read_items",
    "read_table",
    "read_users",
    "scan_delimited",
]
