from . import collaborative, random_ids, semantic, sequential  # noqa: F401  (each registers itself in INDEXERS)
from .base import INDEXERS, ItemIndexer, build_indexer, level_token

__all__ = ["INDEXERS", "ItemIndexer", "build_indexer", "level_token"]
