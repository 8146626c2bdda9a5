from . import loaders  # noqa: F401  (each loader registers itself in LOADERS)
from .base import LOADERS, DataFormatError, InteractionData, load_dataset
from .split import Split, cold_item_split, leave_one_out

__all__ = ["LOADERS", "DataFormatError", "InteractionData", "Split", "cold_item_split", "leave_one_out", "load_dataset"]
