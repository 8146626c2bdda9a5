"""MovieLens loaders: ``"ml-100k"`` (GroupLens raw files or RecBole atomic files) and
``"movielens"`` (the ml-latest-small CSV layout, with ``tags.csv`` as ``InteractionData.tags``
when the directory has it).

The two ml-100k sources hold the same 100,000 ratings row for row, but RecBole splits the year out
of the title (and spells the placeholder movie "unkonwn"). Both are rebuilt into GroupLens's
"Title (year)" form so that a model trained on one source reads the same prompts from the other.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from ..base import LOADERS, DataFormatError, InteractionData
from ..download import GROUPLENS_FILES, RECBOLE_FILES, get_ml100k

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
# Item 267 of ml-100k is a placeholder with no real title; RecBole misspells it.
_PLACEHOLDER_TITLES = {"unknown", "unkonwn"}
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")
_USER_COLUMNS = ("age", "gender", "occupation")


@LOADERS.register("ml-100k")
def load_ml100k(path: str | Path | None = None, name: str = "ml-100k") -> InteractionData:
    """Load MovieLens 100K from a directory holding either GroupLens or RecBole files.

    With no path, the default copy is obtained (and cached) by :func:`promptrec.data.download.get_ml100k`.
    """
    if path is None:
        path = get_ml100k()
    directory = Path(path)
    if all((directory / f).is_file() for f in GROUPLENS_FILES):
        interactions, items, users = _read_grouplens(directory)
        source = "grouplens"
    elif all((directory / f).is_file() for f in RECBOLE_FILES):
        interactions, items, users = _read_recbole(directory)
        source = "recbole"
    else:
        raise DataFormatError(
            directory,
            f"expected GroupLens files {list(GROUPLENS_FILES)} or RecBole files {list(RECBOLE_FILES)}",
        )
    return InteractionData(
        interactions=interactions,
        items=items,
        users=users,
        name=name,
        meta={"loader": "ml-100k", "source": source, "path": str(directory), "timestamp": "unix"},
    )


@LOADERS.register("movielens")
def load_movielens(path: str | Path, name: str = "ml-latest-small") -> InteractionData:
    """Load a MovieLens "latest" directory (``ratings.csv`` and ``movies.csv``; ``tags.csv``, when
    present, becomes ``tags``: user_id, item_id, tag, timestamp)."""
    directory = Path(path)
    ratings_path, movies_path = directory / "ratings.csv", directory / "movies.csv"
    for required in (ratings_path, movies_path):
        if not required.is_file():
            raise DataFormatError(directory, f"missing {required.name}")
    ratings = _read_csv(ratings_path, sep=",", dtype=str, keep_default_na=False)
    _require(ratings_path, ratings, ("userId", "movieId", "rating", "timestamp"))
    for column in ("rating", "timestamp"):
        ratings[column] = _numeric(ratings_path, ratings[column], column)
    movies = _read_csv(movies_path, sep=",", dtype=str, keep_default_na=False)
    _require(movies_path, movies, ("movieId", "title", "genres"))
    interactions = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    titles = [_clean_title(t) for t in movies["title"]]
    items = pd.DataFrame(
        {
            "title": pd.Series(titles, dtype=object),
            "categories": [
                [g for g in genres.split("|") if g and g != "(no genres listed)"]
                for genres in movies["genres"]
            ],
            "year": _years_from_titles(titles),
        }
    ).set_axis(pd.Index(movies["movieId"].str.strip(), name="item_id"))
    return InteractionData(
        interactions=interactions[["user_id", "item_id", "rating", "timestamp"]],
        items=items,
        users=None,
        name=name,
        meta={"loader": "movielens", "path": str(directory), "timestamp": "unix"},
        tags=_read_tags(directory / "tags.csv") if (directory / "tags.csv").is_file() else None,
    )


def _read_tags(path: Path) -> pd.DataFrame:
    """``tags.csv`` (userId, movieId, tag, timestamp) in the canonical column names; tags are
    stripped and empty ones dropped (the file quotes tags that hold commas)."""
    tags = _read_csv(path, sep=",", dtype=str, keep_default_na=False)
    _require(path, tags, ("userId", "movieId", "tag", "timestamp"))
    tags = tags.rename(columns={"userId": "user_id", "movieId": "item_id"})
    for column in ("user_id", "item_id", "tag"):
        tags[column] = tags[column].str.strip()
    tags["timestamp"] = _numeric(path, tags["timestamp"], "timestamp")
    return tags.loc[tags["tag"] != "", ["user_id", "item_id", "tag", "timestamp"]].reset_index(drop=True)


def _read_grouplens(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    ratings = _read_csv(
        directory / "u.data",
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str, "rating": float, "timestamp": float},
    )
    genres = _grouplens_genres(directory / "u.genre")
    raw = _read_csv(
        directory / "u.item",
        sep="|",
        header=None,
        dtype=str,
        encoding="latin-1",
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )
    if raw.shape[1] != 5 + len(genres):
        raise DataFormatError(
            directory / "u.item", f"expected {5 + len(genres)} fields per line, found {raw.shape[1]}"
        )
    flags = raw.iloc[:, 5:].to_numpy() == "1"
    titles = [_clean_title(t) for t in raw[1]]
    items = pd.DataFrame(
        {
            "title": pd.Series(titles, dtype=object),
            "categories": [[g for g, on in zip(genres, row) if on] for row in flags],
            "year": _years_from_titles(titles),
        }
    ).set_axis(pd.Index(raw[0].str.strip(), name="item_id"))
    users = None
    if (directory / "u.user").is_file():
        users = _read_csv(
            directory / "u.user",
            sep="|",
            header=None,
            names=["user_id", *_USER_COLUMNS, "zip_code"],
            dtype=str,
            keep_default_na=False,
        )
        users = _user_table(directory / "u.user", users)
    return ratings, items, users


def _grouplens_genres(path: Path) -> list[str]:
    """Genre names in flag order, from ``u.genre`` (``name|index``) when present."""
    if not path.is_file():
        return list(GENRES)
    table = _read_csv(path, sep="|", header=None, names=["name", "index"], dtype={"name": str})
    return list(table.dropna().sort_values("index")["name"])


def _read_recbole(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    inter_path, item_path = directory / "ml-100k.inter", directory / "ml-100k.item"
    inter = read_atomic(inter_path)
    _require(inter_path, inter, ("user_id", "item_id", "rating", "timestamp"))
    ratings = inter[["user_id", "item_id", "rating", "timestamp"]].copy()
    for column in ("rating", "timestamp"):
        ratings[column] = _numeric(inter_path, inter[column], column)
    raw = read_atomic(item_path)
    _require(item_path, raw, ("item_id", "movie_title"))
    years = raw["release_year"] if "release_year" in raw else pd.Series([""] * len(raw))
    titles = [_recbole_title(t, y) for t, y in zip(raw["movie_title"], years)]
    classes = raw["class"] if "class" in raw else pd.Series([""] * len(raw))
    items = pd.DataFrame(
        {
            "title": pd.Series(titles, dtype=object),
            "categories": [c.split() for c in classes],
            "year": _years_from_titles(titles),
        }
    ).set_axis(pd.Index(raw["item_id"].str.strip(), name="item_id"))
    users = None
    if (directory / "ml-100k.user").is_file():
        users = _user_table(directory / "ml-100k.user", read_atomic(directory / "ml-100k.user"))
    return ratings, items, users


def read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, typed header ``name:type``) as strings.

    RecBole splits lines itself and never quotes, so quote characters in titles stay literal.
    """
    table = _read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    table.columns = [str(c).split(":", 1)[0] for c in table.columns]
    return table


def _user_table(path: Path, raw: pd.DataFrame) -> pd.DataFrame:
    _require(path, raw, ("user_id", *_USER_COLUMNS))
    users = raw.set_index(raw["user_id"].str.strip().rename("user_id"))[list(_USER_COLUMNS)].copy()
    users["age"] = pd.array(_numeric(path, raw["age"], "age"), dtype="Int64")
    return users


def _recbole_title(title: str, year: str) -> str | None:
    title, year = title.strip(), year.strip()
    if title in _PLACEHOLDER_TITLES:
        return None
    return f"{title} ({year})" if year.isdigit() else title


def _clean_title(title: str) -> str | None:
    title = title.strip()
    return None if not title or title in _PLACEHOLDER_TITLES else title


def _years_from_titles(titles: list[str | None]) -> pd.Series:
    """The last "(yyyy)" of each title: some end in a note, e.g. "... (1995) (V)"."""
    years = [found[-1] if t and (found := _YEAR_IN_TITLE.findall(t)) else None for t in titles]
    return pd.Series(pd.to_numeric(pd.Series(years, dtype=object)), dtype="Int64")


def _numeric(path: Path, values: pd.Series, column: str) -> pd.Series:
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        row = int(bad.argmax())
        # Header on line 1, no quoting: row i is on physical line i + 2.
        raise DataFormatError(path, f"non-numeric {column} {values.iloc[row]!r}", row + 2)
    return converted.astype(float)


def _require(path: Path, table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataFormatError(path, f"missing column(s) {missing}; found {list(table.columns)}", 1)


def _read_csv(path: Path, **options: object) -> pd.DataFrame:
    """``pandas.read_csv`` whose parse errors name the file."""
    try:
        return pd.read_csv(path, **options)  # type: ignore[call-overload]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"cannot parse: {err}") from None


__all__ = ["GENRES", "load_ml100k", "load_movielens", "read_atomic"]
