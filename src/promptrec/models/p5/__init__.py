"""The P5 recommender: a language model asked with prompts (:mod:`.model`), its run configuration
(:mod:`.config`), training (:mod:`.training`), constrained generation (:mod:`.generation`),
evaluation (:mod:`.evaluation`), template search (:mod:`.template_search`) and export as a chat
model (:mod:`.export`). Importing this package registers ``p5``."""

from . import model  # noqa: F401  (registers its recommender)
