"""Sequential baselines: ``sasrec``. Importing this package registers them."""

from . import sasrec  # noqa: F401  (registers its recommender)
