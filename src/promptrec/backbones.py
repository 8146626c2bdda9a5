"""Language-model backbones, built from a named size preset (random init) or a local directory.

Presets follow T5's naming; ``small`` has t5-small's dimensions. ``tiny`` is for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from transformers import PreTrainedModel, T5Config, T5ForConditionalGeneration

from .registry import Registry

BACKBONES: Registry[Callable[..., PreTrainedModel]] = Registry("backbone")

T5_PRESETS: dict[str, dict[str, Any]] = {
    # d_model, feed-forward width, layers (encoder = decoder), heads, head size
    "tiny": dict(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16),
    "mini": dict(d_model=128, d_ff=512, num_layers=2, num_heads=4, d_kv=32),
    "compact": dict(d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64),
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64),
}


@BACKBONES.register("t5")
def build_t5(
    vocab_size: int,
    preset: str = "small",
    pretrained: str | Path | None = None,
    dropout: float = 0.1,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
) -> T5ForConditionalGeneration:
    """A T5 encoder-decoder with ``vocab_size`` embeddings.

    With ``pretrained`` (a local transformers directory) the weights are loaded from it and the
    embeddings resized for the added item/user tokens; otherwise the preset is random-initialised.
    """
    if pretrained is not None:
        model = T5ForConditionalGeneration.from_pretrained(str(pretrained))
        model.resize_token_embeddings(vocab_size)
        return model
    if preset not in T5_PRESETS:
        raise ValueError(f"unknown T5 preset {preset!r}; known: {sorted(T5_PRESETS)}")
    p = T5_PRESETS[preset]
    config = T5Config(
        vocab_size=vocab_size,
        d_model=p["d_model"],
        d_ff=p["d_ff"],
        num_layers=p["num_layers"],
        num_decoder_layers=p["num_layers"],
        num_heads=p["num_heads"],
        d_kv=p["d_kv"],
        dropout_rate=dropout,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=pad_token_id,
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(config)
