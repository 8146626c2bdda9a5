"""Sequential baselines: ``sasrec``, ``bsarec``. Importing this package registers them."""

from . import bsarec, sasrec  # noqa: F401  (each registers its recommender)
