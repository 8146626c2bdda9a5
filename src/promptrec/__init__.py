"""promptrec: recommendation with pretrained language models (pretrain, prompt, predict)."""

__version__ = "0.1.0"
