"""Non-LM baselines, evaluated in the same harness as the LM recommenders.

Importing this package registers each baseline in :data:`promptrec.recommender.RECOMMENDERS`:
``popularity``, ``itemknn``, ``bpr``, ``sasrec`` and ``biased_mf`` (the last three import torch;
``biased_mf`` predicts explicit ratings).
"""

from . import biased_mf, bpr, itemknn, popularity, sasrec  # noqa: F401  (each registers its recommender)
from .biased_mf import BiasedMF
from .bpr import BPR
from .itemknn import ItemKNN
from .popularity import MostPopular
from .sasrec import SASRec

__all__ = ["BPR", "BiasedMF", "ItemKNN", "MostPopular", "SASRec"]
