"""Loaders: small fixtures written here, plus checks against the real benchmark files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptrec.data import LOADERS, DataFormatError, load_dataset
from promptrec.data.loaders.movielens import load_ml100k, load_movielens
from promptrec.data.loaders.p5 import load_p5, parse_category_list
from promptrec.data.loaders.tabular import load_tabular, read_items


def shared_data() -> Path:
    configured = os.environ.get("PROMPTREC_SHARED_DATA")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"


def real_dataset(name: str) -> Path:
    path = shared_data() / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} not found (set PROMPTREC_SHARED_DATA to its folder)")
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_builtin_loaders_are_registered() -> None:
    assert {"p5", "ml-100k", "movielens", "tabular"} <= set(LOADERS.names())


# --- p5 -------------------------------------------------------------------------------------

ITEM_HEADER = (
    "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\t"
    "categories:token_seq\tprice:float\tbrand:token\n"
)


def make_p5(directory: Path, with_meta: bool = True) -> Path:
    directory.mkdir()
    maps = {
        "user2id": {"AUSER1": "1", "AUSER2": "2"},
        "id2user": {"1": "AUSER1", "2": "AUSER2"},
        # Integer order differs from ASIN order on purpose; item 4 is never interacted with.
        "id2item": {"1": "B000000003", "2": "B000000001", "3": "B000000002", "4": "B000000009"},
        "id2attribute": {"1": "Acme &amp; Co", "2": "Makeup", "3": ""},
    }
    write(directory / "p5_datamaps.json", json.dumps(maps))
    write(directory / "Tiny.txt", "1 1 2 3\n2 3 1\n")
    write(directory / "Tiny_item2attributes.json", json.dumps({"1": [1, 2], "2": [2, 3], "3": [2, 2], "4": []}))
    if with_meta:
        write(
            directory / "Amazon_Tiny.item",
            ITEM_HEADER
            + "B000000003\tLip &amp; Cheek Tint\tBeauty\t10.0\t'Beauty', 'Makeup'\t5.5\tAcme &amp; Co\n"
            + "B000000001\t\"Cream \nVanilla\"\t\t\t\"'Beauty', \"\"Women's\"\", 'Face, Body'\"\t11.28\tOrganix\n"
            + "B000000002\t\tBeauty\t\t'Beauty'\t\t\n"
            + "B000000009\tTab\tBeauty\t1\t\t2\tX\n",
        )
    return directory


def test_p5_uses_raw_ids_and_positions(tmp_path: Path) -> None:
    data = load_p5(make_p5(tmp_path / "tiny"))
    assert data.name == "tiny"
    assert data.sequences() == {
        "AUSER1": ["B000000003", "B000000001", "B000000002"],
        "AUSER2": ["B000000002", "B000000003"],
    }
    assert data.interactions["timestamp"].tolist() == [0, 1, 2, 0, 1]
    assert data.interactions["rating"].isna().all()
    # Every datamaps item, sorted by ASIN so that row order does not leak the integer ids.
    assert list(data.items.index) == ["B000000001", "B000000002", "B000000003", "B000000009"]


def test_p5_item_metadata(tmp_path: Path) -> None:
    items = load_p5(make_p5(tmp_path / "tiny")).items
    assert items.loc["B000000001", "title"] == "Cream Vanilla"
    assert items.loc["B000000001", "categories"] == ["Beauty", "Women's", "Face, Body"]
    assert items.loc["B000000001", "price"] == pytest.approx(11.28)
    assert items.loc["B000000003", "title"] == "Lip & Cheek Tint"
    assert items.loc["B000000003", "brand"] == "Acme & Co"
    assert items.loc["B000000002", "title"] is None
    assert np.isnan(items.loc["B000000002", "price"])


def test_p5_without_metadata_uses_attribute_names(tmp_path: Path) -> None:
    items = load_dataset("p5", make_p5(tmp_path / "tiny", with_meta=False)).items
    assert "title" not in items.columns and "brand" not in items.columns
    assert items.loc["B000000003", "categories"] == ["Acme & Co", "Makeup"]
    assert items.loc["B000000001", "categories"] == ["Makeup"]  # the empty name is dropped
    assert items.loc["B000000002", "categories"] == ["Makeup"]  # duplicates removed
    assert items.loc["B000000009", "categories"] == []


def test_p5_unknown_item_names_the_line(tmp_path: Path) -> None:
    directory = make_p5(tmp_path / "tiny")
    write(directory / "Tiny.txt", "1 1 2\n2 3 99\n")
    with pytest.raises(DataFormatError, match=r"Tiny\.txt, line 2: item '99'"):
        load_p5(directory)


def test_parse_category_list() -> None:
    assert parse_category_list("'Beauty', 'Creams, Gels & Lotions'") == ["Beauty", "Creams, Gels & Lotions"]
    assert parse_category_list("'Beauty', \"Men's\"") == ["Beauty", "Men's"]
    assert parse_category_list("'It\\'s', 'x'") == ["It's", "x"]
    assert parse_category_list("") == []


# --- MovieLens ------------------------------------------------------------------------------

GENRES = "unknown|0\nAction|1\nComedy|2\nSci-Fi|3\n"


def make_grouplens(directory: Path) -> Path:
    directory.mkdir()
    # User 1 has two ratings at the same time, in file order 20 then 10.
    write(directory / "u.data", "1\t20\t4\t100\n1\t10\t3\t100\n2\t10\t5\t50\n1\t30\t1\t90\n")
    write(
        directory / "u.item",
        "10|Alien (1979)|01-Jan-1979||http://x|0|1|0|1\n"
        "20|Misérables, Les (1995) |01-Jan-1995||http://y|0|0|1|0\n"
        "30|unknown||||1|0|0|0\n",
        encoding="latin-1",
    )
    write(directory / "u.genre", GENRES)
    write(directory / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return directory


def make_recbole(directory: Path) -> Path:
    directory.mkdir()
    write(
        directory / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t20\t4\t100\n1\t10\t3\t100\n2\t10\t5\t50\n1\t30\t1\t90\n",
    )
    write(
        directory / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tAlien\t1979\tAction Sci-Fi\n20\tMisérables, Les\t1995\tComedy\n30\tunkonwn\tunkonwn\tunknown\n",
    )
    write(
        directory / "ml-100k.user",
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
    )
    return directory


def test_ml100k_grouplens(tmp_path: Path) -> None:
    data = load_dataset("ml-100k", make_grouplens(tmp_path / "gl"))
    assert data.meta["source"] == "grouplens"
    assert data.sequences() == {"1": ["30", "20", "10"], "2": ["10"]}  # tie kept in file order
    assert data.items.loc["10", "title"] == "Alien (1979)"
    assert data.items.loc["10", "categories"] == ["Action", "Sci-Fi"]
    assert data.items.loc["20", "title"] == "Misérables, Les (1995)"
    assert data.items.loc["30", "title"] is None
    assert data.users.loc["2"].to_dict() == {"age": 53, "gender": "F", "occupation": "other"}


def test_ml100k_sources_agree(tmp_path: Path) -> None:
    grouplens = load_ml100k(make_grouplens(tmp_path / "gl"))
    recbole = load_ml100k(make_recbole(tmp_path / "rb"))
    assert recbole.meta["source"] == "recbole"
    pd.testing.assert_frame_equal(grouplens.interactions, recbole.interactions)
    pd.testing.assert_frame_equal(grouplens.items.sort_index(), recbole.items.sort_index())
    pd.testing.assert_frame_equal(grouplens.users.sort_index(), recbole.users.sort_index())


def test_ml100k_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="u.data"):
        load_ml100k(tmp_path)


def test_movielens_latest(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.5,5\n")
    write(
        tmp_path / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '2,"American President, The (1995)",(no genres listed)\n',
    )
    data = load_movielens(tmp_path)
    assert data.sequences() == {"1": ["2", "1"]}
    assert data.items.loc["2", "title"] == "American President, The (1995)"
    assert data.items.loc["2", "categories"] == []
    assert data.items.loc["1", "year"] == 1995
    assert data.tags is None  # no tags.csv
    write(tmp_path / "tags.csv", 'userId,movieId,tag,timestamp\n1,1,funny,20\n1,2,"politics, satire ",21\n1,2, ,22\n')
    tags = load_movielens(tmp_path).tags
    assert tags.to_dict("records") == [
        {"user_id": "1", "item_id": "1", "tag": "funny", "timestamp": 20.0},
        {"user_id": "1", "item_id": "2", "tag": "politics, satire", "timestamp": 21.0},
    ]


# --- tabular --------------------------------------------------------------------------------


def test_tabular_csv_with_items_and_users(tmp_path: Path) -> None:
    inter = write(tmp_path / "events.csv", "user_id,item_id,timestamp,rating\nu1,b,2,5\nu1,a,1,\nu2,a,3,4.5\n")
    items = write(tmp_path / "items.csv", 'item_id,title,categories,brand,price\na,"Alpha, the first",x|y,Acme,9.5\n')
    users = write(tmp_path / "users.tsv", "user_id\tage\tcountry\tzip\nu1\t31\tNZ\t0123\n")
    data = load_tabular(inter, items=items, users=users)
    assert data.sequences() == {"u1": ["a", "b"], "u2": ["a"]}
    assert np.isnan(data.interactions.loc[0, "rating"])
    assert data.items.loc["a"].to_dict() == {
        "title": "Alpha, the first",
        "categories": ["x", "y"],
        "brand": "Acme",
        "price": 9.5,
    }
    assert "b" in data.items.index  # interacted items missing from the item table are added
    assert data.users.loc["u1"].to_dict() == {"age": 31, "country": "NZ", "zip": "0123"}


def test_tabular_without_timestamp_keeps_file_order(tmp_path: Path) -> None:
    data = load_dataset("tabular", write(tmp_path / "e.csv", "user_id,item_id\nu,z\nu,a\nu,m\n"))
    assert data.sequences() == {"u": ["z", "a", "m"]}
    assert not data.has_ratings


def test_tabular_column_mapping_dataframe_and_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame({"uid": [1, 1, 2], "iid": ["x", "y", "x"], "when": [3, 1, 2]})
    items = pd.DataFrame({"iid": ["x"], "title": ["X"], "categories": [["c1", "c2"]]})
    mapping = {"uid": "user_id", "iid": "item_id", "when": "timestamp"}
    data = load_tabular(frame, items=items, columns=mapping)
    assert data.sequences() == {"1": ["y", "x"], "2": ["x"]}
    assert data.items.loc["x", "categories"] == ["c1", "c2"]

    frame.to_parquet(tmp_path / "e.parquet")
    assert load_tabular(tmp_path / "e.parquet", columns=mapping).sequences() == data.sequences()


def test_tabular_datetime_column(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"user_id": ["u", "u"], "item_id": ["b", "a"], "timestamp": pd.to_datetime(["2020-01-02", "2020-01-01"])}
    )
    data = load_tabular(frame)
    assert data.sequences() == {"u": ["a", "b"]}
    assert data.interactions["timestamp"].iloc[0] == pd.Timestamp("2020-01-01", tz="UTC").timestamp()


def test_tabular_item_table_indexed_by_item_id() -> None:
    items = pd.DataFrame({"title": ["X"]}, index=pd.Index(["x"], name="item_id"))
    assert read_items(items).loc["x", "title"] == "X"


def check_error(path: Path, line: int | None, *fragments: str) -> None:
    with pytest.raises(DataFormatError) as caught:
        load_tabular(path)
    message = str(caught.value)
    assert path.name in message
    if line is not None:
        assert f"line {line}:" in message and caught.value.line == line
    for fragment in fragments:
        assert fragment in message


def test_tabular_wrong_field_count_reports_physical_line(tmp_path: Path) -> None:
    # The quoted newline makes record 3 span lines 3-4, so the bad record is on physical line 5.
    text = 'user_id,item_id,timestamp,rating\nu1,i1,1,5\nu1,"multi\nline",2,4\nu2,i3,3\nu2,i4,4,1\n'
    check_error(write(tmp_path / "bad_line.csv", text), 5, "expected 4 fields", "found 3")


def test_tabular_too_many_fields(tmp_path: Path) -> None:
    check_error(write(tmp_path / "wide.tsv", "user_id\titem_id\nu\ti\nu\ti\textra\n"), 3, "found 3")


def test_tabular_unknown_column_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "unknown.csv", "user_id,item_id,stars\nu,i,5\n")
    check_error(path, 1, "unknown column(s) ['stars']", "user_id, item_id, timestamp, rating")


def test_tabular_empty_file(tmp_path: Path) -> None:
    check_error(write(tmp_path / "empty.csv", ""), None, "empty file")
    check_error(write(tmp_path / "blank.csv", "\n\n"), None, "empty file")


def test_tabular_header_only(tmp_path: Path) -> None:
    check_error(write(tmp_path / "header.csv", "user_id,item_id\n"), None, "no interactions")


def test_tabular_duplicate_header(tmp_path: Path) -> None:
    check_error(write(tmp_path / "dup.csv", "user_id,item_id,item_id\nu,i,j\n"), 1, "duplicate column name 'item_id'")


def test_tabular_two_columns_mapped_to_one_name(tmp_path: Path) -> None:
    path = write(tmp_path / "clash.csv", "uid,user_id,item_id\na,b,c\n")
    with pytest.raises(DataFormatError, match=r"clash\.csv, line 1: columns 'uid' and 'user_id'"):
        load_tabular(path, columns={"user_id": "user_id", "uid": "user_id"})


def test_tabular_missing_required_column(tmp_path: Path) -> None:
    check_error(write(tmp_path / "noitem.csv", "user_id,rating\nu,5\n"), 1, "missing required column(s) ['item_id']")


def test_tabular_non_numeric_rating(tmp_path: Path) -> None:
    path = write(tmp_path / "rating.csv", "user_id,item_id,rating\nu,i,5\n\nu,j,good\n")
    check_error(path, 4, "non-numeric rating 'good'")  # the blank line still counts


def test_tabular_non_numeric_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path / "ts.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,yesterday\n")
    check_error(path, 3, "non-numeric timestamp 'yesterday'")


def test_tabular_empty_timestamp_and_id(tmp_path: Path) -> None:
    check_error(write(tmp_path / "ts.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,\n"), 3, "empty timestamp")
    check_error(write(tmp_path / "id.csv", "user_id,item_id\nu,i\n ,j\n"), 3, "empty user_id")


def test_tabular_unterminated_quote(tmp_path: Path) -> None:
    check_error(write(tmp_path / "quote.csv", 'user_id,item_id\nu,i\nu,"open\nv,j\n'), 3, "malformed quoting")


def test_tabular_unsupported_suffix(tmp_path: Path) -> None:
    check_error(write(tmp_path / "data.xlsx", "x"), None, "unsupported file type")


def test_tabular_item_file_errors(tmp_path: Path) -> None:
    inter = write(tmp_path / "e.csv", "user_id,item_id\nu,a\n")
    dup = write(tmp_path / "items.csv", "item_id,title\na,A\nb,B\na,again\n")
    with pytest.raises(DataFormatError, match=r"items\.csv, line 4: duplicate item_id 'a'"):
        load_tabular(inter, items=dup)
    price = write(tmp_path / "prices.csv", "item_id,price\na,cheap\n")
    with pytest.raises(DataFormatError, match=r"prices\.csv, line 2: non-numeric price 'cheap'"):
        load_tabular(inter, items=price)
    extra = write(tmp_path / "extra.csv", "item_id,colour\na,red\n")
    with pytest.raises(DataFormatError, match=r"extra\.csv, line 1: unknown column\(s\) \['colour'\]"):
        load_tabular(inter, items=extra)


def test_tabular_dataframe_errors_name_the_row() -> None:
    frame = pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "rating": ["5", "five"]})
    with pytest.raises(DataFormatError, match=r"<interactions DataFrame>: row 1: non-numeric rating 'five'"):
        load_tabular(frame)


def test_tabular_mapping_to_undocumented_name() -> None:
    with pytest.raises(ValueError, match="undocumented"):
        load_tabular(pd.DataFrame({"user_id": ["u"], "item_id": ["i"]}), columns={"x": "stars"})


# --- real benchmark data --------------------------------------------------------------------


@pytest.fixture(scope="module")
def beauty():
    return load_dataset("p5", real_dataset("beauty"))


@pytest.mark.realdata
def test_real_beauty(beauty) -> None:
    assert (beauty.n_users, beauty.n_items, len(beauty.interactions)) == (22_363, 12_101, 198_502)
    numbers = {str(i) for i in range(1, 12_102)}
    assert not numbers & set(beauty.items.index)
    assert not {str(i) for i in range(1, 22_364)} & set(beauty.interactions["user_id"])
    # First line of Beauty.txt is "1 1 2 3 4 5": user 1 = A1YJEY40YUW4SE, items in datamaps order.
    first = ["B004756YJA", "B004ZT0SSG", "B0020YLEYK", "7806397051", "B002WLWX82"]
    assert beauty.sequences()["A1YJEY40YUW4SE"] == first
    assert beauty.interactions["rating"].isna().all()


@pytest.mark.realdata
def test_real_beauty_titles(beauty) -> None:
    items = beauty.items
    # The one title with an embedded newline is a single row, with the rest of its fields intact.
    row = items.loc["B0001ZYL3Q"]
    assert row["title"] == "TheraNeem Cream - Original Organix South 2 oz Cream Vanilla"
    assert row["brand"] == "Organix" and row["price"] == pytest.approx(11.28)
    assert row["categories"] == ["Beauty", "Skin Care", "Body", "Moisturizers", "Lotions"]
    titles = items["title"].dropna()
    assert not titles.str.contains("&amp;").any() and not titles.str.contains("\n").any()
    assert titles.str.contains("Crabtree & Evelyn").any()
    # The data README says 8, but the file has exactly 7 empty title fields when parsed as CSV;
    # an eighth goes missing only if the embedded-newline row is split by a line-based reader.
    assert items["title"].isna().sum() == 7
    assert items.loc["9788072216", "categories"] == ["Beauty", "Fragrance", "Women's", "Eau de Parfum"]


@pytest.mark.realdata
def test_real_sports() -> None:
    sports = load_dataset("p5", real_dataset("sports"))
    assert (sports.n_users, sports.n_items, len(sports.interactions)) == (35_598, 18_357, 296_337)
    assert not {str(i) for i in range(1, 18_358)} & set(sports.items.index)
    assert "title" not in sports.items.columns and "brand" not in sports.items.columns
    assert sports.items["categories"].map(len).gt(0).all()
    assert sports.items.loc["1881509818", "categories"][:3] == ["Ghost", "Hunting & Fishing", "Hunting"]


@pytest.mark.realdata
def test_real_ml100k() -> None:
    data = load_dataset("ml-100k", real_dataset("ml-100k"))
    assert (data.n_users, data.n_items, len(data.interactions)) == (943, 1_682, 100_000)
    assert data.items.loc["1", "title"] == "Toy Story (1995)"
    assert data.items.loc["1", "categories"] == ["Animation", "Children's", "Comedy"]
    assert data.items.loc["1682", "title"] is not None
    assert data.users.loc["1"].to_dict() == {"age": 24, "gender": "M", "occupation": "technician"}
    assert data.interactions["rating"].between(1, 5).all()


@pytest.mark.realdata
def test_real_ml_latest_small() -> None:
    data = load_dataset("movielens", real_dataset("ml-latest-small"))
    assert (data.n_users, data.n_items, len(data.interactions)) == (610, 9_742, 100_836)
    assert data.items.loc["1", "title"] == "Toy Story (1995)"
    assert len(data.tags) == 3_683 and data.tags["user_id"].nunique() == 58
