from .base import INDEXERS, ItemIndexer, build_indexer, level_token

__all__ = ["INDEXERS", "ItemIndexer", "build_indexer", "level_token"]
