"""Non-LM baselines, evaluated in the same harness as the LM recommenders.

Importing this package registers each baseline in :data:`promptrec.recommender.RECOMMENDERS`.
"""

from . import popularity  # noqa: F401  (registers "popularity")
from .popularity import MostPopular

__all__ = ["MostPopular"]
