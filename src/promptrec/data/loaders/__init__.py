"""Built-in data loaders; importing this package registers them in :data:`promptrec.data.LOADERS`."""

from . import movielens, p5, synthetic, tabular

__all__ = ["movielens", "p5", "synthetic", "tabular"]
