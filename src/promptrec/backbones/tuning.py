"""Parameter-efficient tuning through peft: LoRA, soft prompts, prefix tuning and IA3.

Full fine-tuning is the default and needs nothing from here. With a peft method the base model is
frozen and wrapped; what is trained (the adapter, plus the token embeddings when item/user tokens
were added to the vocabulary) is all that is saved, next to a reference to the base directory.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from ..core.config import _Strict

if TYPE_CHECKING:
    from transformers import PreTrainedModel

class TuningConfig(_Strict):
    """How the backbone is trained: fully, or through a peft adapter with the base frozen."""

    method: Literal["full", "lora", "prompt", "prefix", "ia3"] = Field(
        "full", description="full fine-tuning, or peft: lora, prompt (soft prompts), prefix, ia3"
    )
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] | str | None = Field(
        None, description="modules to adapt (LoRA, IA3); empty = peft's default for the architecture"
    )
    virtual_tokens: int = Field(20, ge=1, description="soft prompt / prefix length")
    # Item and user tokens are new to any base model, so their embeddings must be learned even
    # when the rest is frozen; off, only the adapter trains (cross-domain "no new vocabulary").
    train_embeddings: bool = Field(True, description="also train the token embedding matrix")


ADAPTER_DIR = "adapter"
EMBEDDINGS = "embeddings.safetensors"
VOCABULARY = "vocabulary.json"  # the grown vocabulary's size, where the adapter holds the new rows
TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM", "SEQ_CLS")


def is_peft(cfg: "TuningConfig") -> bool:
    return cfg.method != "full"


def peft_config(
    cfg: "TuningConfig", task_type: str, new_tokens: list[int] | dict[str, list[int]] | None = None
):
    """The peft config object for ``cfg`` (``task_type``: SEQ_2_SEQ_LM, CAUSAL_LM or SEQ_CLS).

    new_tokens: ids of the tokens added to a pretrained vocabulary, trained as peft's trainable
    tokens under LoRA (with ``train_embeddings``): a list for the input embedding alone, or a
    mapping from module name to ids (see :func:`token_targets`)."""
    import peft

    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {TASK_TYPES}")
    common = dict(task_type=task_type)
    if cfg.method == "lora":
        tokens = new_tokens if cfg.train_embeddings and new_tokens else None
        return peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
            trainable_token_indices=tokens, **common,
        )
    if cfg.method == "ia3":
        return peft.IA3Config(target_modules=cfg.target_modules, **common)
    if cfg.method == "prompt":
        return peft.PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, **common)
    if cfg.method == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, **common)
    raise ValueError(f"tuning method {cfg.method!r} is not a peft method")


def _embedding_weights(model) -> dict[str, torch.nn.Parameter]:
    """The input embedding matrix, and the output one when it is a separate tensor."""
    out = {"input": model.get_input_embeddings().weight}
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != out["input"].data_ptr():
        out["output"] = head.weight
    return out


def token_targets(model, new_tokens: list[int] | None) -> list[int] | dict[str, list[int]] | None:
    """What peft's ``trainable_token_indices`` should hold for ``new_tokens`` on ``model``.

    On a tied model the output layer reads the input embedding's matrix, and peft ties its
    trainable tokens to the input side's: the plain list is enough. On an untied model the output
    layer is a matrix of its own whose new rows the list leaves frozen at the random values the
    resize gave them, never saved, and drawn afresh at every load: so both layers are named, each
    with the new ids, and the adapter trains and saves the rows of both."""
    if not new_tokens:
        return None
    weights = _embedding_weights(model)
    if "output" not in weights:
        return list(new_tokens)
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        # peft's trainable tokens compute an output layer as a bias-free linear map.
        raise ValueError(
            f"trainable item tokens need a bias-free linear output layer, not {type(head).__name__}"
            f"{' with a bias' if getattr(head, 'bias', None) is not None else ''}; set "
            "tuning.train_embeddings=false or use full fine-tuning"
        )
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(model.get_input_embeddings())]: list(new_tokens), names[id(head)]: list(new_tokens)}


def supports_prefix_tuning(model: "PreTrainedModel", task_type: str = "SEQ_CLS") -> bool:
    """peft's prefix tuning passes the prefixes as ``past_key_values``. For classification it
    insists on a forward parameter of that name, which BERT from transformers 5.24 on calls
    ``cache``; generation models take the old name through transformers' deprecation shim."""
    if task_type != "SEQ_CLS":
        return True
    # peft looks at the model's forward, then at its encoder's (``model.bert`` for BERT).
    modules = (model, getattr(model, model.base_model_prefix, None))
    return any(m is not None and "past_key_values" in inspect.signature(m.forward).parameters for m in modules)


def apply_tuning(model: "PreTrainedModel", cfg: "TuningConfig", task_type: str, new_tokens: list[int] | None = None):
    """Wrap ``model`` for ``cfg.method`` (unchanged for full fine-tuning).

    With ``train_embeddings``, LoRA trains the rows of the ``new_tokens`` alone (peft's trainable
    tokens): a pretrained LLM's vocabulary is most of its weights (Gemma 3 270M: 168 M of 268 M),
    and training it whole would cost an optimizer update of every row per step and a copy of the
    matrix in every saved model, for rows no gradient but the new tokens' should move. The other
    methods train the whole matrix. On an untied model the output layer's rows of the new tokens
    are trained the same way (:func:`token_targets`)."""
    if not is_peft(cfg):
        return model
    import peft

    if cfg.method == "prefix" and not supports_prefix_tuning(model, task_type):
        raise ValueError(
            f"prefix tuning is not available for {type(model).__name__} with this transformers "
            "version (its forward takes no past_key_values, through which peft passes the "
            "prefixes); use lora, prompt or ia3"
        )

    config = peft_config(cfg, task_type, token_targets(model, new_tokens) if cfg.method == "lora" else new_tokens)
    wrapped = peft.get_peft_model(model, config)
    if cfg.train_embeddings and not getattr(config, "trainable_token_indices", None):
        for weight in _embedding_weights(wrapped).values():
            weight.requires_grad_(True)
    return wrapped


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def unwrap(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    import peft

    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def save_tuned(model, directory: str | Path) -> None:
    """Write the adapter and the embedding matrices; the frozen base is referenced, not copied."""
    d = Path(directory)
    model.save_pretrained(str(d / ADAPTER_DIR), save_embedding_layers=False)
    if getattr(model.active_peft_config, "trainable_token_indices", None):
        # The new tokens' rows are in the adapter; the base needs only to grow to their number.
        (d / VOCABULARY).write_text(json.dumps({"vocab_size": model.get_input_embeddings().weight.shape[0]}))
        return
    tensors = {k: v.detach().cpu().contiguous() for k, v in _embedding_weights(model).items()}
    save_file(tensors, str(d / EMBEDDINGS))


def load_tuned(base: "PreTrainedModel", directory: str | Path):
    """Rebuild a tuned model from its frozen ``base`` and what :func:`save_tuned` wrote."""
    import peft

    d = Path(directory)
    if (d / VOCABULARY).is_file():
        base.resize_token_embeddings(json.loads((d / VOCABULARY).read_text())["vocab_size"], mean_resizing=False)
        return peft.PeftModel.from_pretrained(base, str(d / ADAPTER_DIR), is_trainable=False)
    tensors = load_file(str(d / EMBEDDINGS))
    base.resize_token_embeddings(tensors["input"].shape[0])
    with torch.no_grad():
        for name, weight in _embedding_weights(base).items():
            if name not in tensors:
                raise ValueError(f"{d / EMBEDDINGS} lacks the {name} embeddings of this base model")
            weight.copy_(tensors[name])
    return peft.PeftModel.from_pretrained(base, str(d / ADAPTER_DIR), is_trainable=False)
