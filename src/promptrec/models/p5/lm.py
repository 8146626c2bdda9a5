"""What differs between the two kinds of LM a prompt recommender runs on, in one place each.

An encoder-decoder (T5) reads the prompt whole and writes the answer in its decoder; a
decoder-only causal LM (GPT-2, LLaMA, Qwen2) reads prompt and answer as one sequence. The
recommender asks its LM kind how to pad, build a training batch, read the first answer token and
compute the loss; it never branches on the architecture itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Sequence
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from ...backbones.tuning import unwrap


class LMKind(ABC):
    causal: ClassVar[bool]
    peft_task: ClassVar[str]  # peft's task type for the kind
    padding_side: ClassVar[str]  # where prompts are padded for prediction

    @abstractmethod
    def training_batch(
        self,
        model: Any,
        tokenizer: Any,
        inputs: list[str],
        targets: list[str],
        history: Sequence[bool] | None,
        item_tokens: Container[int],
        answer_eos: bool,
        history_from: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs plus ``targets``: the token to predict at each of the last positions of
        the logits (-100 where nothing is), so that :meth:`loss` serves both kinds."""

    @abstractmethod
    def next_token_logits(self, model: Any, enc: dict[str, torch.Tensor], prompt_learning: bool) -> torch.Tensor:
        """(B, vocab) logits of the first answer token of encoded prompts."""

    @abstractmethod
    def answer_start(self, enc: dict[str, torch.Tensor]) -> int:
        """Where the decoded answer starts in what ``generate`` returns."""

    def loss(
        self, model: Any, batch: dict[str, torch.Tensor], targets: torch.Tensor, loss_fn: Callable,
        vocabulary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``loss_fn`` (a cross-entropy; its reduction is the caller's) of the targets (-100 =
        none) aligned with the last logits positions.

        vocabulary: sorted token ids the softmax covers (default: the whole vocabulary); every
        target must be one of them.
        """
        # The last positions line up with the targets (soft prompts add positions in front).
        logits = model(**batch).logits[:, -targets.size(1) :]
        real = targets != -100
        logits, wanted = logits[real], targets[real]
        if vocabulary is not None:
            logits, wanted = logits[:, vocabulary], _positions_in(vocabulary, wanted)
        return loss_fn(logits.float(), wanted)


def _positions_in(vocabulary: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Where each token sits in the sorted ``vocabulary``; a token outside it is an error (its
    loss would silently be that of a neighbour)."""
    pos = torch.searchsorted(vocabulary, tokens).clamp(max=len(vocabulary) - 1)
    if not torch.equal(vocabulary[pos], tokens):
        stray = tokens[vocabulary[pos] != tokens][:5].tolist()
        raise ValueError(f"train.softmax=items: targets {stray} are not item tokens or </s>")
    return pos


def _head_rows(head: torch.nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight (and bias) rows for the token ids ``rows``. Under LoRA with
    trainable tokens (tuning.py) the head is peft's wrapper, whose new tokens' rows are kept apart
    from the frozen matrix: they replace the frozen rows here, as the wrapper's forward does for
    the whole matrix."""
    if isinstance(head, torch.nn.Linear):
        return head.weight[rows], None if head.bias is None else head.bias[rows]
    head = getattr(head, "token_adapter", head)  # peft's wrapper module around the layer
    weight = head.base_layer.weight[rows]
    for name in head.active_adapters:
        tokens = torch.tensor(head.token_indices[name], device=rows.device)
        pos = torch.searchsorted(rows, tokens).clamp(max=len(rows) - 1)
        hit = rows[pos] == tokens
        weight = weight.index_copy(0, pos[hit], head.trainable_tokens_delta[name][hit].to(weight))
    return weight, None


def _fully_sharded(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule  # FSDP2, torch 2.6 on
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _body(model: Any) -> torch.nn.Module | None:
    """The transformer body under the output layer, where calling it alone computes what the
    model's forward would up to the output layer: a plain transformers model, or one with LoRA or
    IA3 (which live inside the base's layers). Soft prompts and prefixes exist only in peft's
    own forward, and a distributed wrapper must run its own: None for those. So must a model that
    FSDP shards in place: its root forward gathers the weights outside the blocks."""
    if _fully_sharded(model):
        return None
    if isinstance(model, PreTrainedModel):
        return model.base_model
    import peft

    if isinstance(model, peft.PeftModel) and not model.active_peft_config.is_prompt_learning:
        return model.get_base_model().base_model
    return None


class EncoderDecoder(LMKind):
    causal = False
    peft_task = "SEQ_2_SEQ_LM"
    padding_side = "right"  # the encoder reads each prompt whole

    def training_batch(self, model, tokenizer, inputs, targets, history, item_tokens, answer_eos, history_from=None):
        if history is not None and any(history):
            raise ValueError("history targets need a causal LM")
        enc = tokenizer(inputs, padding=True, return_tensors="pt", return_token_type_ids=False)
        labels = tokenizer(targets, padding=True, return_tensors="pt", return_token_type_ids=False)["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        # The decoder reads the labels shifted right; passing the labels themselves would make
        # the model compute a second loss that training never uses.
        enc["decoder_input_ids"] = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
        enc["targets"] = labels
        return enc

    def next_token_logits(self, model, enc, prompt_learning):
        start = torch.full(
            (enc["input_ids"].shape[0], 1), unwrap(model).config.decoder_start_token_id, device=enc["input_ids"].device
        )
        return model(**enc, decoder_input_ids=start).logits[:, 0, :]

    def answer_start(self, enc):
        return 1  # after the decoder's start token


class DecoderOnly(LMKind):
    causal = True
    peft_task = "CAUSAL_LM"
    # A causal LM continues the prompt, so prompts are padded on the left and all end at the last
    # position.
    padding_side = "left"

    def training_batch(self, model, tokenizer, inputs, targets, history, item_tokens, answer_eos, history_from=None):
        """history: per example, whether the item tokens inside its prompt (its history, in
        order) are targets too: each is then learned from the tokens before it; history_from:
        per example, the first of them that is (the ones before were learned elsewhere)."""
        prompts = tokenizer(inputs, return_token_type_ids=False)["input_ids"]
        # The answer continues the prompt: no second <bos> (pretrained tokenizers add one to
        # every text); its </s> is added below where one is wanted.
        answers = tokenizer(targets, add_special_tokens=False, return_token_type_ids=False)["input_ids"]
        eos = tokenizer.eos_token_id
        seqs, tgts = [], []
        for r, (p, a) in enumerate(zip(prompts, answers)):
            # The answer must end, or decoding never would. Without answer_eos the answer is one
            # more item of the sequence: an </s> target after it would teach the position that
            # holds the last item (where evaluation asks for the next one) to predict the end.
            if answer_eos and (not a or a[-1] != eos):
                a = [*a, eos]
            seqs.append(p + a)
            # Position t predicts token t + 1: only answer tokens are targets (loss on the target),
            # and, for history examples, the item tokens of the prompt.
            if history is not None and history[r]:
                # p[0] is never a target; the k-th item token of p is one iff k >= skip.
                skip = history_from[r] if history_from is not None else 0
                lead, k = [], int(p[0] in item_tokens)
                for t in p[1:]:
                    item = t in item_tokens
                    lead.append(t if item and k >= skip else -100)
                    k += item
            else:
                lead = [-100] * (len(p) - 1)
            tgts.append(lead + a + [-100])
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        target = torch.full((len(seqs), width), -100, dtype=torch.long)
        for r, (seq, tgt) in enumerate(zip(seqs, tgts)):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            target[r, : len(tgt)] = torch.tensor(tgt)
        return {"input_ids": ids, "attention_mask": mask, "targets": target}

    def next_token_logits(self, model, enc, prompt_learning):
        # Left-padded: every prompt's next token is read at the last position, and positions count
        # from each prompt's first real token (absolute position embeddings need that, not the
        # padded index). peft's soft prompts and prefixes drop position ids (see _per_length).
        if not prompt_learning:
            pos = enc["attention_mask"].cumsum(-1) - 1
            enc = {**enc, "position_ids": pos.clamp(min=0)}
        # No generation follows: no cache to build.
        return model(**enc, logits_to_keep=1, use_cache=False).logits[:, -1, :]

    def answer_start(self, enc):
        return enc["input_ids"].shape[1]  # right after the prompt

    def loss(self, model, batch, targets, loss_fn, vocabulary=None):
        body = _body(model)
        if body is None:
            return super().loss(model, batch, targets, loss_fn, vocabulary)
        # The output layer over the whole vocabulary is most of a step when items are single
        # tokens (and nearly all of it with a pretrained LM's 262k-word vocabulary); only the
        # target positions need it, so the body's hidden states are gathered there first (prompt
        # positions far outnumber targets), and with a vocabulary only its rows are used.
        hidden = body(**batch).last_hidden_state  # (B, T, d)
        real = targets != -100
        head = unwrap(model).get_output_embeddings()
        wanted = targets[real]
        if vocabulary is None:
            logits = head(hidden[real])  # (n_targets, vocab)
        else:
            weight, bias = _head_rows(head, vocabulary)
            logits = torch.nn.functional.linear(hidden[real], weight, bias)
            wanted = _positions_in(vocabulary, wanted)
        cap = getattr(unwrap(model).config, "final_logit_softcapping", None)
        if cap:  # Gemma 2's soft cap, which the model's forward applies after the output layer
            logits = torch.tanh(logits / cap) * cap
        return loss_fn(logits.float(), wanted)


ENCODER_DECODER, DECODER_ONLY = EncoderDecoder(), DecoderOnly()


def lm_kind(model: Any) -> LMKind:
    """The kind of a (possibly peft-wrapped) transformers LM."""
    return ENCODER_DECODER if getattr(unwrap(model).config, "is_encoder_decoder", False) else DECODER_ONLY
