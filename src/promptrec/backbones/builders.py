"""Language-model backbones, built from a named size preset (random init) or a local directory.

``t5`` is an encoder-decoder; ``gpt2``, ``llama`` and ``qwen2`` are decoder-only causal LMs. Presets
follow T5's naming (``small`` has t5-small's dimensions; ``tiny`` is for tests); a causal preset
has as many layers as the T5 preset's encoder and decoder together, so sizes are comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from ..core.registry import Registry

BACKBONES: Registry[Callable[..., PreTrainedModel]] = Registry("backbone")

T5_PRESETS: dict[str, dict[str, Any]] = {
    # d_model, feed-forward width, layers (encoder = decoder), heads, head size
    "tiny": dict(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16),
    # SASRec's reference shape on Amazon data (d 64, two causal blocks, one head) for the
    # decoder-only backbones, which stack encoder + decoder layers.
    "micro": dict(d_model=64, d_ff=256, num_layers=1, num_heads=1, d_kv=64),
    "mini": dict(d_model=128, d_ff=512, num_layers=2, num_heads=4, d_kv=32),
    "compact": dict(d_model=256, d_ff=1024, num_layers=4, num_heads=4, d_kv=64),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64),
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64),
}


@BACKBONES.register("t5")
def build_t5(
    vocab_size: int,
    preset: str = "small",
    dropout: float = 0.1,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
) -> T5ForConditionalGeneration:
    """A random-initialised T5 encoder-decoder with ``vocab_size`` embeddings."""
    p = _preset(preset)
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


def _preset(name: str) -> dict[str, Any]:
    if name not in T5_PRESETS:
        raise ValueError(f"unknown size preset {name!r}; known: {sorted(T5_PRESETS)}")
    return T5_PRESETS[name]


def _causal_dims(preset: str) -> dict[str, int]:
    p = _preset(preset)
    return dict(hidden=p["d_model"], ffn=p["d_ff"], layers=2 * p["num_layers"], heads=p["num_heads"])


# Prompts are a few hundred tokens at most; positions beyond are never needed.
MAX_POSITIONS = 1024


@BACKBONES.register("gpt2")
def build_gpt2(
    vocab_size: int, preset: str = "small", dropout: float = 0.1, pad_token_id: int = 0, eos_token_id: int = 1,
) -> GPT2LMHeadModel:
    """A random-initialised GPT-2 (learned positions, LayerNorm, GELU)."""
    d = _causal_dims(preset)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=d["hidden"], n_inner=d["ffn"], n_layer=d["layers"], n_head=d["heads"],
        n_positions=MAX_POSITIONS, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def _llama_like(
    config_cls, model_cls, vocab_size: int, preset: str, dropout: float, pad_token_id: int, eos_token_id: int
):
    # LLaMA-style configs have no dropout but the attention weights'.
    d = _causal_dims(preset)
    config = config_cls(
        vocab_size=vocab_size, hidden_size=d["hidden"], intermediate_size=d["ffn"], num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"], num_key_value_heads=d["heads"], max_position_embeddings=MAX_POSITIONS,
        attention_dropout=dropout, bos_token_id=eos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        tie_word_embeddings=True,
    )
    return model_cls(config)


@BACKBONES.register("llama")
def build_llama(
    vocab_size: int, preset: str = "small", dropout: float = 0.1, pad_token_id: int = 0, eos_token_id: int = 1,
) -> LlamaForCausalLM:
    """A random-initialised LLaMA (rotary positions, RMSNorm, SwiGLU)."""
    return _llama_like(LlamaConfig, LlamaForCausalLM, vocab_size, preset, dropout, pad_token_id, eos_token_id)


@BACKBONES.register("qwen2")
def build_qwen2(
    vocab_size: int, preset: str = "small", dropout: float = 0.1, pad_token_id: int = 0, eos_token_id: int = 1,
) -> Qwen2ForCausalLM:
    """A random-initialised Qwen2 (LLaMA-like, with biases on the attention projections)."""
    return _llama_like(Qwen2Config, Qwen2ForCausalLM, vocab_size, preset, dropout, pad_token_id, eos_token_id)


def load_pretrained(path: str | Path, random_weights: bool = False) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer) from a local transformers directory; with ``random_weights`` the same
    architecture and tokenizer with freshly initialised weights (what pretraining brings is the
    difference between the two).

    A promptrec model directory to start from is loaded by
    :func:`promptrec.models.p5.model.load_base`, which comes back here for anything else.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"pretrained model directory {d} does not exist")
    config = AutoConfig.from_pretrained(str(d))
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_config(config) if random_weights else auto.from_pretrained(str(d))
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
