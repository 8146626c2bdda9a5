import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptrec.data import InteractionData, leave_one_out

SHARED_DATA = Path(os.environ.get("PROMPTREC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} not present (set PROMPTREC_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the store and replica tests: ``PROMPTREC_TEST_POSTGRES_URL`` when
    set, else a throwaway one started on loopback for this test session (tests/postgres_server.py),
    else the test is skipped and says why. Tests share it: each takes a schema of its own
    (``postgres_schema_url``) or ids unique to the test."""
    from postgres_server import ThrowawayPostgres, binaries

    url = os.environ.get("PROMPTREC_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if binaries() is None:
        pytest.skip("no PostgreSQL: install its server binaries (initdb, pg_ctl, postgres; Debian: apt-get install "
                    "postgresql) or set PROMPTREC_TEST_POSTGRES_URL=postgresql+psycopg://...")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('no PostgreSQL driver: pip install -e ".[postgres]"')
    server = ThrowawayPostgres()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """The URL of an empty schema of this test's own on the session's PostgreSQL server (dropped
    afterwards: a server given in PROMPTREC_TEST_POSTGRES_URL outlives the tests)."""
    from postgres_server import drop_schema, fresh_schema

    url = fresh_schema(postgres_url)
    yield url
    drop_schema(url)


@pytest.fixture(autouse=True)
def _private_embedding_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Text embeddings are cached per test: no test reads another's (or the user's) entries."""
    from promptrec.indexing import semantic

    monkeypatch.setattr(semantic, "embedding_cache", lambda: tmp_path / "text-embeddings")


def cyclic_data(n_users: int = 40, n_items: int = 30, length: int = 8, seed: int = 0) -> InteractionData:
    """Users walk a cycle of items (i, i+1, i+2, ...): the next item is fully predictable."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        rows += [(f"user{u}", f"item{(start + t) % n_items}", t) for t in range(length)]
    items = pd.DataFrame(
        {"item_id": [f"item{i}" for i in range(n_items)], "title": [f"thing number {i}" for i in range(n_items)]}
    )
    return InteractionData(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), items)


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory) -> Path:
    """A random-init word-level BERT saved as a local encoder directory (stands in for MiniLM)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ";", "title", "item", "film", "thing", "number",
             *map(str, range(50))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(directory)
    return directory


@pytest.fixture
def cyclic_split():
    return leave_one_out(cyclic_data())


def assert_recommender_contract(model, split, directory: Path, k: int = 5) -> None:
    """What every registered recommender promises, checked on a fitted ``model`` of ``split``.

    The ``recommend`` table (columns, users grouped in the order asked, external ids, exactly
    ``k`` unique catalogue items ranked 1..k best first, the stage's history excluded, an answer
    for an unknown user), the same code's evaluation without violations, ``k`` beyond what is
    left, argument errors, and a save/load round trip with no pickle files and equal answers.
    """
    from promptrec.core.recommender import RECOMMENDATION_COLUMNS, STAGES, load_recommender
    from promptrec.evaluation.ranking import evaluate_rankings

    catalogue = set(split.data.items.index)
    users = [*split.test["user_id"][:8], "nobody"]
    for stage in STAGES:
        history = split.history(stage)
        recs = model.recommend(users, k=k, stage=stage)
        assert list(recs.columns) == list(RECOMMENDATION_COLUMNS)
        assert list(dict.fromkeys(recs["user_id"])) == users  # grouped, in the order asked
        for user, group in recs.groupby("user_id", sort=False):
            assert group["rank"].tolist() == list(range(1, k + 1))  # exactly k: enough items left
            assert set(group["item_id"]) <= catalogue and group["item_id"].is_unique
            assert not set(group["item_id"]) & set(history.get(user, []))
            assert (np.diff(group["score"].to_numpy()) <= 1e-6).all()
        summary, _ = evaluate_rankings(model, split, stage=stage, k=k, metrics=["HR@5"])
        assert summary["history_violations"] == 0 and summary["invalid_rate"] == 0

    # k beyond what is left: every unseen item once; without exclusion, the whole catalogue.
    user = users[0]
    unseen = catalogue - set(split.history("test")[user])
    assert sorted(model.recommend([user], k=1000)["item_id"]) == sorted(unseen)
    assert len(model.recommend([user], k=1000, exclude_seen=False)) == len(catalogue)
    assert len(model.recommend([user], k=1)) == 1
    # An explicit history replaces the stored one (and is excluded); candidates bound the answer.
    given = sorted(catalogue)[:3]
    assert not set(model.recommend([user], k=k, histories={user: given})["item_id"]) & set(given)
    allowed = sorted(unseen)[:4]
    answer = model.recommend([user, users[1]], k=k, candidates={user: allowed})
    mine = answer[answer["user_id"] == user]
    assert set(mine["item_id"]) <= set(allowed) and len(mine) == min(k, len(allowed))
    assert (answer["user_id"] == users[1]).sum() == k  # a user without a list is not restricted
    assert model.recommend([], k=3).empty
    with pytest.raises(ValueError, match="k must be"):
        model.recommend([user], k=0)
    with pytest.raises(ValueError, match="stage"):
        model.recommend([user], stage="train")

    model.save_pretrained(directory)
    assert not any(p.suffix in {".pkl", ".pt", ".bin"} for p in directory.rglob("*"))
    restored = load_recommender(directory)
    assert type(restored) is type(model) and restored.get_params() == model.get_params()
    for stage in STAGES:
        pd.testing.assert_frame_equal(
            restored.recommend(users, k=k, stage=stage), model.recommend(users, k=k, stage=stage)
        )


class ServedModel:
    """``promptrec serve`` on a saved model directory as a child process on loopback; ``url``
    once ``/ready`` answers. ``key`` is its API key (every scope). ``log``: a file for the
    server's output, which the caller can then read (a pipe nobody reads would fill up)."""

    key = "test-key-123"

    def __init__(self, model: Path, database: Path | str, *extra: str, env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        import signal  # noqa: F401  (stop() sends one)
        import socket
        import subprocess
        import sys
        import time

        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PROMPTREC_API_KEY": self.key, "OMP_NUM_THREADS": "1", **(env or {})}
        cmd = [sys.executable, "-m", "promptrec.cli", "serve", str(model), "--port", str(self.port),
               "--database", str(database), "--max-k", "20", *extra]
        self.log = log
        if log is None:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = log.read_text() if log is not None else self.proc.stderr.read().decode()
                raise RuntimeError(f"server exited: {output[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server not ready in 90 s")

    def stop(self, sig: int | None = None) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if sig is None else sig)
            self.proc.wait(timeout=30)
