"""Non-LM baselines, evaluated in the same harness as the LM recommenders.

Importing this package registers each baseline in :data:`promptrec.recommender.RECOMMENDERS`:
``popularity``, ``itemknn``, ``bpr`` and ``sasrec`` (the last two import torch).
"""

from . import bpr, itemknn, popularity, sasrec  # noqa: F401  (each registers its recommender)
from .bpr import BPR
from .itemknn import ItemKNN
from .popularity import MostPopular
from .sasrec import SASRec

__all__ = ["BPR", "ItemKNN", "MostPopular", "SASRec"]
