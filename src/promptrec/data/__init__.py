from .base import LOADERS, DataFormatError, InteractionData, load_dataset
from .split import Split, leave_one_out

__all__ = ["LOADERS", "DataFormatError", "InteractionData", "Split", "leave_one_out", "load_dataset"]
