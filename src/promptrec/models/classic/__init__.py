"""Non-sequential baselines, evaluated in the same harness as the LM recommenders: ``popularity``,
``itemknn``, ``bpr`` and ``biased_mf`` (the last two import torch; ``biased_mf`` predicts explicit
ratings). Importing this package registers each of them."""

from . import biased_mf, bpr, itemknn, popularity  # noqa: F401  (each registers its recommender)
