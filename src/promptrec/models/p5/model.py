"""P5-style recommender: item codes in prompts, a language model, trie-constrained generation.

The LM is an encoder-decoder (T5) or a decoder-only causal LM (GPT-2, LLaMA, Qwen2); a causal LM
reads the prompt and the target as one sequence and is trained on the target tokens only. Either
is trained fully or through a peft adapter (:mod:`promptrec.backbones.tuning`).

``P5Recommender`` is an estimator: ``fit(split)`` fits the item index, the tokenizer and the LM
on training data; ``recommend(user_ids, k)`` takes and returns external ids; ``save_pretrained``
writes a directory that ``from_pretrained`` turns back into a working recommender without any
training data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ... import __version__
from ...backbones.builders import BACKBONES, load_pretrained
from ...backbones.frequency import add_frequency_filter, kept_frequencies
from ...backbones.tokenization import add_tokens, build_tokenizer
from ...pretrained import PACKAGED, resolve_model
from ...backbones.tuning import apply_tuning, is_peft, load_tuned, save_tuned, trainable_parameters, unwrap
from ...core.recommender import RECOMMENDERS, Recommender, check_k, check_stage, recommendation_frame
from ...core.items import DISPLAY_COLUMNS, load_item_table, save_item_table
from ...data import Split
from ...data.split import group_sequences
from ...indexing import ItemIndexer, build_indexer
from ...prompts.tasks import TASKS, TaskContext, rating_text
from ...prompts.templates import TemplateSet
from .config import RunConfig
from .item_text import attribute_table, plain_state_dict
from .lm import LMKind, lm_kind
from .generation import ItemTrie, TrieConstraint, collect_beams, fixed_length_beam_search, supports_fixed_length_search, top_items

WEIGHTS = "model.safetensors"
BASE_FILE = "base.json"  # a tuned model's base: path, relative path, fingerprint


def _batches(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


@RECOMMENDERS.register("p5")
class P5Recommender(Recommender):
    name = "p5"
    warm_starts = True

    def __init__(self, config: RunConfig | None = None, templates: TemplateSet | None = None) -> None:
        self.config = config or RunConfig()
        self.indexer: ItemIndexer | None = None
        self.tokenizer = None
        self.model = None
        # A saved model brings its own copy of the templates; the configured file may not exist
        # where the model is served.
        self.templates = templates or TemplateSet.load(self.config.model.templates)
        self.items: pd.DataFrame | None = None  # catalogue with titles, for prompts and display
        self.train_history: dict[str, list[str]] = {}
        self.valid_item: dict[str, str] = {}
        self.user_tokens: dict[str, str] = {}
        self.fit_info_: dict[str, Any] = {}
        self.item_start: tuple[torch.Tensor, torch.Tensor] | None = None  # (token rows, their text start)
        self.item_text: tuple[torch.Tensor, torch.Tensor] | None = None  # (centred text vectors, their PCA map)
        self.item_attributes: torch.Tensor | None = None  # train.item_attributes: (items, attributes), -1 padded
        self._onnx = None  # an ONNX Runtime session for next-token logits (use_runtime("onnx"))

    # ------------------------------------------------------------------------------- building
    def build(self, split: Split, progress: bool = False) -> "P5Recommender":
        """Fit the item index and tokenizer on the training split and create the LM (untrained)."""
        cfg = self.config
        data = split.data
        self.items = data.items[[c for c in DISPLAY_COLUMNS if c in data.items]].copy()
        self.train_history = split.train_sequences()
        self.valid_item = dict(zip(split.valid["user_id"], split.valid["item_id"]))
        self.indexer = build_indexer(cfg.index.method, seed=cfg.train.seed, **cfg.index.params)
        self.indexer.fit(self.train_history, list(data.items.index), data.items)
        users = sorted(self.train_history)
        self.user_tokens = {u: f"<u_{i}>" for i, u in enumerate(users)} if cfg.model.user_tokens else {}
        if cfg.model.pretrained:
            # A pretrained backbone keeps its own tokenizer (its ids match the weights); the item
            # and user tokens are added to it (those it has are reused) and the embeddings grow
            # to match. The architecture is the directory's, whatever model.backbone says. A
            # packaged model keeps its name (it resolves on any machine that has the package); a
            # path is stored absolute: a peft model is loaded from it wherever it is served.
            if cfg.model.pretrained not in PACKAGED:
                self.config = cfg = cfg.update({"model.pretrained": str(Path(cfg.model.pretrained).resolve())})
            base, self.tokenizer = load_base(cfg.model.pretrained, cfg.model.random_weights)
            words = len(self.tokenizer)
            add_tokens(self.tokenizer, self.indexer.tokens(), list(self.user_tokens.values()))
            base.resize_token_embeddings(len(self.tokenizer))
            if cfg.model.item_init == "lm":
                self._init_items_from_lm(base, words)
        else:
            if is_peft(cfg.model.tuning):
                raise ValueError(
                    f"model.tuning.method={cfg.model.tuning.method} freezes the base model, so it needs "
                    "model.pretrained (a local transformers or promptrec model directory); a "
                    "random-initialised backbone is trained fully (tuning.method=full)"
                )
            # The words of the templates a P5 model is trained or asked with; the file's chat
            # templates (for general chat models) are not its business.
            p5_families = {TASKS.get(n).template_family or n for n in TASKS}
            template_text = [
                text for t in self.templates.templates if t.family in p5_families for text in (t.input, t.target)
            ]
            self.tokenizer = build_tokenizer(
                self._corpus(split),
                self.indexer.tokens(),
                list(self.user_tokens.values()),
                max_words=cfg.model.max_words,
                required=[re.sub(r"\{\w+\}", " ", text) for text in template_text],
                end_with_eos=cfg.model.prompt_eos,
            )
            base = BACKBONES.get(cfg.model.backbone)(
                vocab_size=len(self.tokenizer),
                preset=cfg.model.preset,
                dropout=cfg.model.dropout,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        if cfg.model.frequency_filter:
            if is_peft(cfg.model.tuning):
                raise ValueError("model.frequency_filter trains a branch of the base model: it needs model.tuning.method=full")
            _add_filter(base, cfg.model)
        if cfg.model.item_init == "text":
            self._init_items_from_text(base, split, progress)
        if not cfg.model.prompt_eos and self.tokenizer("x")["input_ids"][-1] == self.tokenizer.eos_token_id:
            # An answer without </s> continues the prompt as one more item; a prompt that ends
            # with </s> (T5's tokenizer adds it) would ask for the next item after the end.
            raise ValueError("model.prompt_eos=false needs a tokenizer that does not end every text with </s>")
        # Tokens added to a pretrained vocabulary (its own rows stay frozen under LoRA).
        added = list(range(words, len(self.tokenizer))) if cfg.model.pretrained else None
        self.model = apply_tuning(base, cfg.model.tuning, lm_kind(base).peft_task, added)
        self._build_trie()
        return self

    def _init_items_from_text(self, base, split: Split, progress: bool) -> None:
        """Overwrite the item tokens' input embeddings (tied to the output ones in the built-in
        backbones) with their text vectors, scaled to the spread of the init they replace."""
        from ...indexing.semantic import resolve_encoder, text_item_basis

        codes = self._one_token_codes("model.item_init=text")
        encoder = resolve_encoder(self.config.model.item_encoder, "model.item_init=text", "model.item_encoder=DIR")
        weight = base.get_input_embeddings().weight
        catalogue = list(codes)
        text, basis = (torch.from_numpy(a) for a in text_item_basis(
            split.data.items, catalogue, split.train_items(), weight.shape[1], encoder, progress=progress
        ))
        vectors = text @ basis
        rows = torch.tensor(self.tokenizer.convert_tokens_to_ids([codes[i] for i in catalogue]))
        k = vectors.shape[1]
        scale = weight[rows, :k].std() / vectors.std()
        with torch.no_grad():
            weight[rows, :k] = vectors.to(weight.dtype) * scale
        self.item_start = (rows, weight[rows].detach().clone())  # what train.item_anchor pulls toward
        if self.config.train.text_projection:  # it learns the map from text to embedding, from this one
            projection = torch.zeros(text.shape[1], weight.shape[1])
            projection[:, :k] = basis * scale
            self.item_text = (text, projection)
            if self.config.train.item_attributes:
                self.item_attributes = attribute_table(split.data.items, catalogue)

    def _one_token_codes(self, setting: str) -> dict[str, str]:
        codes = self.indexer.codes
        if any(len(code) != 1 for code in codes.values()):
            raise ValueError(f"{setting} needs one token per item (e.g. index.method=random, levels: 1)")
        return {item: code[0] for item, code in codes.items()}

    def _init_items_from_lm(self, base, words: int) -> None:
        """Start each item token at the mean of the pretrained LM's input embeddings of its
        title's tokens (the first ``words`` rows: the LM's own vocabulary). An item without a
        title keeps the init the grown embedding matrix gave it."""
        codes = self._one_token_codes("model.item_init=lm")
        titles = self.items["title"].dropna().astype(str) if "title" in self.items else pd.Series(dtype=str)
        titled = [i for i in codes if i in titles.index and titles[i].strip()]
        weight = base.get_input_embeddings().weight
        row = dict(zip(codes, self.tokenizer.convert_tokens_to_ids(list(codes.values()))))
        ids = self.tokenizer([titles[i] for i in titled], add_special_tokens=False)["input_ids"] if titled else []
        with torch.no_grad():
            for item, tokens in zip(titled, ids):
                tokens = [t for t in tokens if t < words]
                if tokens:
                    weight[row[item]] = weight[tokens].mean(0)
        rows = torch.tensor(list(row.values()))
        self.item_start = (rows, weight[rows].detach().clone())  # what train.item_anchor pulls toward

    def item_vocabulary(self) -> torch.Tensor:
        """Sorted token ids of every item code token and </s>: what ``train.softmax=items`` covers."""
        return torch.tensor(sorted({*self.item_token_ids, self.tokenizer.eos_token_id}))

    @property
    def lm(self) -> LMKind:
        """What the LM's kind (encoder-decoder or decoder-only) decides: padding, batches, the
        first answer token, the loss."""
        return lm_kind(self.model)

    @property
    def causal(self) -> bool:
        """True for a decoder-only LM (prompt and answer in one sequence)."""
        return self.lm.causal

    def parameter_counts(self) -> dict[str, int]:
        trainable, total = trainable_parameters(self.model)
        return {"trainable_parameters": trainable, "total_parameters": total}

    def _corpus(self, split: Split) -> Iterable[str]:
        # Item text of training items only: the vocabulary must not depend on held-out events.
        train_items = split.train_items()
        for col in ("title", "brand"):
            if col in self.items:
                yield from self.items.loc[self.items.index.isin(train_items), col].dropna().astype(str)
        if "categories" in self.items:
            for cats in self.items.loc[self.items.index.isin(train_items), "categories"].dropna():
                yield " ".join(cats) if isinstance(cats, (list, tuple, np.ndarray)) else str(cats)

    def _build_trie(self) -> None:
        # Beam search pads finished rows and stops at this tokenizer's EOS, whatever a base says.
        gen = unwrap(self.model).generation_config
        gen.pad_token_id, gen.eos_token_id = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        self.item_ids = list(self.indexer.codes)
        self.item_pos = {item: i for i, item in enumerate(self.item_ids)}
        vocab = self.tokenizer.get_vocab()
        codes = [[vocab[t] for t in self.indexer.codes[i]] for i in self.item_ids]
        self.trie = ItemTrie(codes, self.tokenizer.eos_token_id)
        if not self.config.model.prompt_eos and self.trie.code_length is None:
            raise ValueError(
                "model.prompt_eos=false needs item codes of one length: answers then carry no </s>, "
                "so decoding must stop at the code length"
            )
        self.search = self._decoding()
        if self.config.model.frequency_filter and self.search != "one_token":
            raise ValueError(
                "model.frequency_filter needs one token per item and one-token ranking "
                f"(index levels: 1, eval.search auto); this model would decode with {self.search!r}"
            )
        self.item_token_ids = frozenset(t for code in codes for t in code)
        self.trie_first_tokens = torch.tensor([code[0] for code in codes])
        self.titles = (
            self.items["title"].dropna().astype(str).to_dict() if "title" in self.items else {}
        )
        # Rendering fields at prediction time (history text, titles, negatives) needs no sequences.
        self.prompt_context = self.context({})

    def _decoding(self) -> str:
        """How constrained decoding runs, chosen once per loaded model (``eval.search``):
        ``one_token`` (one token per item: one forward pass scores every item exactly),
        ``fixed_length`` (an encoder-decoder over equal-length codes: promptrec's own beam
        search, sharing the encoder across beams), or ``generate`` (transformers' beam search
        with the trie as a LogitsProcessor: every other case, and soft prompts or prefixes, which
        only the peft wrapper's own forward adds; LoRA and IA3 live inside the base's layers)."""
        if self.config.eval.search == "generate":
            return "generate"
        if self.trie.code_length == 1:
            return "one_token"
        if not self._prompt_learning and supports_fixed_length_search(unwrap(self.model), self.trie):
            return "fixed_length"
        return "generate"

    def context(self, sequences: Mapping[str, list[str]], ratings=None) -> TaskContext:
        users = list(sequences)
        return TaskContext(
            sequences=[sequences[u] for u in users],
            users=users,
            catalogue=self.item_ids,
            item_text=self.indexer.text,
            user_text=self.user_text,
            titles=self.titles,
            ratings=ratings,
            max_history=self.config.model.max_history,
            train_candidates=self.config.tasks.train_candidates,
            window_stride=self.config.tasks.window_stride,
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, seed: int | None = None) -> "P5Recommender":
        """From a run config as nested keys (``{"model": {...}}``) or dotted ones
        (``{"train.epochs": 3}``) over the defaults; ``seed`` sets ``train.seed`` unless given."""
        params = dict(params or {})
        if seed is not None and "train.seed" not in params and "seed" not in params.get("train", {}):
            params["train.seed"] = seed
        nested = {k: v for k, v in params.items() if "." not in k}
        dotted = {k: v for k, v in params.items() if "." in k}
        return cls(RunConfig.model_validate(nested).update(dotted))

    def get_params(self) -> dict[str, Any]:
        return self.config.to_dict()

    def user_text(self, user: str) -> str:
        return self.user_tokens.get(user, "<unk>") if self.user_tokens else "the user"

    # ------------------------------------------------------------------------------- training
    def fit(
        self,
        split: Split,
        output_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool | None = None,
    ) -> "P5Recommender":
        """Build the index, tokenizer and LM on ``split`` and train; with ``output_dir``,
        checkpoints go to ``output_dir/checkpoint`` and ``resume`` continues from them.
        ``progress`` (default: the ``progress`` attribute) shows bars."""
        from .training import train

        progress = self.progress if progress is None else progress
        self._onnx = None  # exported from weights that training replaces
        return train(self, split, output_dir=output_dir, resume=resume, progress=progress)

    def fit_with_checkpoints(self, split: Split, directory: str | Path, resume: bool = False) -> "P5Recommender":
        return self.fit(split, output_dir=directory, resume=resume)

    def update(
        self,
        split: Split,
        *,
        epochs: int | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> "P5Recommender":
        """Warm start: fine-tune the fitted LM, index and tokenizer on ``split``. ``params`` are
        run-config keys for this update only (e.g. ``{"train.lr": 1e-4}``); the saved config
        stays the model's own and the update's settings go to ``fit_info_["update"]``. Items the
        index does not know cannot be learned: a full refit is needed for those."""
        from .training import train

        overrides = dict(params or {})  # a key given there wins over epochs and seed
        if epochs is not None:
            overrides.setdefault("train.epochs", epochs)
        if seed is not None:
            overrides.setdefault("train.seed", seed)
        weights = self.config.tasks.weights
        if weights.get("rating", 0) > 0 and not split.data.has_ratings:
            # Without ratings in the new data the rating family is not fine-tuned (its weights
            # still change with the shared layers; refit to refresh it).
            overrides.setdefault("tasks.weights", {n: w for n, w in weights.items() if n != "rating"})
        original = self.config
        self.config = self.config.update(overrides)
        self._onnx = None
        try:
            train(self, split, progress=self.progress, warm_start=True)
            used = self.config.to_dict()
        finally:
            self.config = original
        trained = sorted(n for n, w in used["tasks"]["weights"].items() if w > 0)
        self.fit_info_ = {**self.fit_info_, "update": {"warm_start": True, "families": trained, "config": used}}
        return self

    # ------------------------------------------------------------------------------- prediction
    def catalogue(self) -> list[str]:
        return list(self.item_ids)

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        check_stage(stage)
        return {u: self.history(u, stage) for u in sorted(set(self.train_history) | set(self.valid_item))}

    def item_table(self) -> pd.DataFrame:
        return self.items

    def capabilities(self) -> frozenset[str]:
        """``score`` and ``rate`` where the model was trained on the yes/no and rating families."""
        weights = self.config.tasks.weights
        return frozenset(
            ability for family, ability in (("yesno", "score"), ("rating", "rate")) if weights.get(family, 0) > 0
        )

    def quantize(self, method: str) -> None:
        """``"int8"``: dynamic int8 quantisation of the LM's Linear layers (weights int8,
        activations quantised per batch on the fly): CPU only, no calibration data needed."""
        if method != "int8":
            raise ValueError(f"quantize must be 'int8', got {method!r}")
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch.ao announces its move to torchao; the eager API still works and needs no extra package.
            warnings.simplefilter("ignore")
            self.model = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)

    def use_runtime(self, runtime: str, cache_dir: str | Path | None = None) -> None:
        """``"onnx"``: compute the first answer token's logits (one-token ranking, yes/no scores)
        with ONNX Runtime on the CPU; ``"default"``: back to PyTorch. The graph is exported into
        ``cache_dir`` once and loaded from there afterwards. Beam searches stay in PyTorch."""
        if runtime == "default":
            self._onnx = None
            return
        if runtime != "onnx":
            raise ValueError(f"runtime must be 'default' or 'onnx', got {runtime!r}")
        if self._prompt_learning:
            raise ValueError("runtime 'onnx' serves models without soft prompts or prefixes (peft prompt learning)")
        if self.model.device.type != "cpu":
            raise ValueError(f"runtime 'onnx' runs on the CPU; this model is on {self.model.device}")
        from .onnx_runtime import load_or_export

        example = self._encode(self.sequential_prompts(["example"] * 2, [self.item_ids[:3], self.item_ids[:1]]))
        self._onnx = load_or_export(self.model, self.lm, example, Path(cache_dir) if cache_dir else None)

    def history(self, user: str, stage: str = "test") -> list[str]:
        """The user's known history: training items, plus the validation item for "test"."""
        check_stage(stage)
        hist = list(self.train_history.get(user, []))
        if stage == "test" and user in self.valid_item:
            hist.append(self.valid_item[user])
        return hist

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            prompts, padding=True, padding_side=self.lm.padding_side, return_tensors="pt", return_token_type_ids=False
        )
        device = self.model.device
        return {k: v.to(device) for k, v in enc.items()}

    def training_batch(
        self,
        inputs: list[str],
        targets: list[str],
        history: Sequence[bool] | None = None,
        history_from: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs plus ``targets``: the token to predict at each of the last positions of
        the logits (-100 where nothing is), so one loss serves both kinds of LM.

        history: per example, whether the item tokens inside its prompt (its history, in order)
        are targets too (causal LMs only): each is then learned from the tokens before it.
        history_from: per example, the first of those item tokens that is a target (default 0).
        """
        return self.lm.training_batch(
            self.model, self.tokenizer, inputs, targets, history, self.item_token_ids, self.config.model.prompt_eos,
            history_from,
        )

    def _sequential_template(self, template: str | None = None):
        tid = template or self.config.eval.template
        return self.templates.get(tid) if tid else self.templates.family("sequential")[0]

    def sequential_prompts(
        self, users: Sequence[str], histories: Sequence[Sequence[str]], template: str | None = None
    ) -> list[str]:
        """Next-item prompts for ``users`` with the given histories (the most recent items shown)."""
        tmpl = self._sequential_template(template)
        ctx = self.prompt_context
        prompts = [tmpl.render_input({"user": self.user_text(u), "history": ctx.history_text(h)}) for u, h in zip(users, histories)]
        shots = self.config.eval.shots
        if shots:
            pool = self.demonstration_pool()
            prompts = [self.demonstrations(u, shots, tmpl, pool) + p for u, p in zip(users, prompts)]
        return prompts

    def demonstrations(self, user: str, shots: int, template=None, pool: Sequence[str] | None = None) -> str:
        """``shots`` solved examples for in-context prompting, each from another user's training
        sequence (a prefix and the item after it), chosen by a seed of the user's id. The target
        user's own events, and every validation and test event, stay out.

        pool: the users to draw from (default :meth:`demonstration_pool`; pass it when building
        many prompts, to compute it once)."""
        tmpl = template or self._sequential_template()
        ctx = self.prompt_context
        others = [u for u in (pool if pool is not None else self.demonstration_pool()) if u != user]
        if not others:
            return ""
        rng = np.random.default_rng([self.config.train.seed, *user.encode()])
        lines = []
        for j in rng.choice(len(others), size=min(shots, len(others)), replace=False):
            other = others[int(j)]
            seq = self.train_history[other]
            t = int(rng.integers(1, len(seq)))
            src, tgt = tmpl.render({"user": self.user_text(other), "history": ctx.history_text(seq[:t]), "target": ctx.item_text(seq[t])})
            lines.append(f"{src} {tgt}\n")
        return "".join(lines)

    def demonstration_pool(self) -> list[str]:
        """Users with a training sequence long enough to show a prefix and its next item."""
        return sorted(u for u, s in self.train_history.items() if len(s) >= 2)

    @property
    def _prompt_learning(self) -> bool:
        """A peft soft prompt or prefix, which only the wrapper's forward and generate add."""
        return self.model is not unwrap(self.model) and self.model.active_peft_config.is_prompt_learning

    def _per_length(self, fn, prompts: list[str], *aligned) -> list | None:
        """``fn`` over the prompts of each token length apart, results in the prompts' order; None
        when one padded batch is fine. peft drops the position ids when it prepends a soft prompt
        to a causal LM, so a left-padded prompt would be read at shifted positions."""
        if not (self.causal and self._prompt_learning):
            return None
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        if len(set(lengths)) < 2:
            return None
        results: list = [None] * len(prompts)
        for n in set(lengths):
            rows = [r for r, m in enumerate(lengths) if m == n]
            pick = lambda values: None if values is None else [values[r] for r in rows]  # noqa: E731
            for r, res in zip(rows, fn(pick(prompts), *map(pick, aligned))):
                results[r] = res
        return results

    @torch.no_grad()
    def generate_items(
        self,
        prompts: list[str],
        k: int,
        excluded: list[list[str]] | None = None,
        allowed: list[list[str]] | None = None,
        constrained: bool = True,
    ) -> list[list[tuple[str | None, float]]]:
        """Beam search with ``k`` beams; per prompt, ``k`` (item or None if invalid, score) pairs.

        Scores are sequence log-probabilities of the code tokens (length penalty 0; with
        fixed-length codes the closing EOS, near-certain after a complete code, is not decoded).
        """
        if self.model.training:  # eval() walks every module: a tenth of a served call's time
            self.model.eval()
        grouped = self._per_length(
            lambda p, e, a: self.generate_items(p, k, e, a, constrained), prompts, excluded, allowed
        )
        if grouped is not None:
            return grouped
        # One beam would be greedy search, which reports no sequence scores: search with two
        # and keep the best.
        beams = max(k, 2)
        enc = self._encode(prompts)
        to_idx = lambda items: [self.item_pos[i] for i in items if i in self.item_pos]
        excluded_idx = [to_idx(e) for e in excluded] if excluded is not None else None
        allowed_idx = [to_idx(a) for a in allowed] if allowed is not None else None
        bf16 = self.config.eval.precision == "bf16"
        start = self.lm.answer_start(enc)
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=bf16):
            if constrained and self.search == "one_token":
                # One token per item: the first decoding step already scores every item, so the
                # exact full ranking is one forward pass (beam search would give the same top k).
                logp = torch.log_softmax(self._next_token_logits(enc).float(), dim=-1)
                scores = logp[:, self.trie_first_tokens]
                rows = top_items(scores, k, excluded_idx, allowed_idx)
                return [[(self.item_ids[i], s) for i, s in row] for row in rows]
            if constrained and self.search == "fixed_length":
                rows = fixed_length_beam_search(unwrap(self.model), enc, self.trie, beams, excluded_idx, allowed_idx)
                return [[(self.item_ids[i], s) for i, s in row[:k]] for row in rows]
            processors = [TrieConstraint(self.trie, beams, excluded_idx, allowed_idx, start=start)] if constrained else []
            out = self.model.generate(
                **enc,
                num_beams=beams,
                num_return_sequences=beams,
                max_new_tokens=self.trie.decode_steps,
                length_penalty=0.0,
                early_stopping=True,
                do_sample=False,
                logits_processor=processors,
                return_dict_in_generate=True,
                output_scores=True,
            )
        rows = collect_beams(
            self.trie, out.sequences[:, start:].tolist(), out.sequences_scores.float().tolist(), beams, constrained
        )
        results = [[(self.item_ids[i] if i is not None else None, s) for i, s in row[:k]] for row in rows]
        return results

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
        template: str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Top-``k`` items per user as a table ``user_id, item_id, score, rank`` (external ids).

        histories: explicit recent histories overriding the stored ones (e.g. live feedback);
        candidates: per user, the only items the decoding may produce.
        """
        user_ids = [str(u) for u in user_ids]
        lists = self.ranked(user_ids, k, exclude_seen, stage, histories, candidates, template, batch_size, progress)
        rows = [(u, item, score, rank) for u, items in zip(user_ids, lists)
                for rank, (item, score) in enumerate(items, start=1)]
        # Columns, not rows: building the frame from tuples costs a served request a millisecond.
        users, items, scores, ranks = zip(*rows) if rows else ((), (), (), ())
        return recommendation_frame(users, items, scores, ranks)

    def ranked(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
        template: str | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """``recommend``'s lists, one per user in ``user_ids`` order, before they become a table."""
        k = check_k(k)
        check_stage(stage)
        bs = batch_size or self.config.eval.batch_size
        user_ids = [str(u) for u in user_ids]
        lists: list[list[tuple[str, float]]] = []
        batches = list(_batches(user_ids, bs))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="recommend", unit="batch")
        for batch in batches:
            hists = [self.current_history(u, stage, histories) for u in batch]
            prompts = self.sequential_prompts(batch, hists, template)
            allowed = None
            if candidates is not None and any(u in candidates for u in batch):
                # A user without a list may produce any item.
                allowed = [list(candidates[u]) if u in candidates else self.item_ids for u in batch]
            lists.extend(self.generate_items(prompts, k, excluded=hists if exclude_seen else None, allowed=allowed))
        return lists

    @torch.no_grad()
    def _first_token_probs(self, prompts: list[str], words: list[str]) -> np.ndarray:
        """P(word) for each of ``words`` as the first answer token, renormalised over ``words``."""
        if self.model.training:
            self.model.eval()
        grouped = self._per_length(lambda p: self._first_token_probs(p, words), prompts)
        if grouped is not None:
            return np.stack(grouped)
        logits = self._next_token_logits(self._encode(prompts))
        ids = [self.tokenizer.convert_tokens_to_ids(w) for w in words]
        return torch.softmax(logits[:, ids].float(), dim=-1).cpu().numpy()

    def _next_token_logits(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the first answer token for encoded prompts, one row per prompt."""
        if self._onnx is not None:
            return self._onnx(enc)
        return self.lm.next_token_logits(self.model, enc, self._prompt_learning)

    def score(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        stage: str = "test",
        batch_size: int = 256,
        histories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """P(yes) from the direct yes/no family for each (user, item) pair.

        histories: one explicit history per pair (e.g. with live feedback) instead of the stored
        ``stage`` history.
        """
        tmpl = self.templates.family("yesno")[0]
        ctx = self.prompt_context
        out = []
        users = list(map(str, user_ids))
        if histories is None:
            histories = [self.history(u, stage) for u in users]
        elif len(histories) != len(users):
            raise ValueError(f"{len(histories)} histories for {len(users)} pairs")
        pairs = list(zip(users, map(str, item_ids), histories))
        for batch in _batches(pairs, batch_size):
            prompts = [
                tmpl.render_input(
                    {
                        "user": self.user_text(u),
                        "history": ctx.history_text(list(h)),
                        "item": self.indexer.text(i),
                        "title": ctx.title(i),
                        "answer": "",
                    }
                )
                for u, i, h in batch
            ]
            out.append(self._first_token_probs(prompts, ["yes", "no"])[:, 0])
        return np.concatenate(out) if out else np.zeros(0)

    def predict_rating(self, user_ids: Sequence[str], item_ids: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Expected star rating: sum over r of r * P(r) for the answer tokens 1..5."""
        tmpl = self.templates.family("rating")[0]
        ctx = self.prompt_context
        stars = np.arange(1, 6, dtype=float)
        out = []
        pairs = list(zip(map(str, user_ids), map(str, item_ids)))
        for batch in _batches(pairs, batch_size):
            prompts = [
                tmpl.render_input({"user": self.user_text(u), "item": self.indexer.text(i), "title": ctx.title(i)})
                for u, i in batch
            ]
            out.append(self._first_token_probs(prompts, [rating_text(s) for s in stars]) @ stars)
        return np.concatenate(out) if out else np.zeros(0)

    # ------------------------------------------------------------------------------- evaluation
    def extra_metrics(self, split: Split, stage: str, users: Sequence[str]) -> dict[str, Any]:
        """Invalid outputs without the trie, and the families beyond ranking it was trained on."""
        from .evaluation import p5_extra_metrics

        return p5_extra_metrics(self, split, stage, list(users))

    def evaluate_users(self, split: Split, users: Sequence[str], stage: str = "valid") -> dict[str, float]:
        """HR/NDCG on a subset of users (early stopping uses it on validation users)."""
        from .evaluation import evaluate_users

        return evaluate_users(self, split, users, stage)

    # ------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._write_config(d)
        (d / "templates.yaml").write_text(self.templates.to_yaml())
        self.indexer.save(d)
        self.tokenizer.save_pretrained(str(d / "tokenizer"))
        unwrap(self.model).config.save_pretrained(str(d / "backbone"))
        if is_peft(self.config.model.tuning):
            # The frozen base stays where model.pretrained points; only what was trained is saved,
            # with what finds the base again once the two have moved (base_model_locator).
            save_tuned(self.model, d)
            base = Path(resolve_model(self.config.model.pretrained, "model.pretrained")).resolve()
            (d / BASE_FILE).write_text(json.dumps({
                "path": str(base), "relative": os.path.relpath(base, d.resolve()), "fingerprint": fingerprint(base),
            }, indent=2))
        else:
            # Tied embeddings share storage; save one copy and let loading re-tie them.
            state, seen = {}, set()
            for name, value in plain_state_dict(self.model).items():
                if value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    state[name] = value.detach().cpu().contiguous()
            save_file(state, str(d / WEIGHTS), metadata={"format": "pt", "promptrec_version": __version__})
        hist = [(u, i, "train") for u, items in self.train_history.items() for i in items]
        hist += [(u, i, "valid") for u, i in self.valid_item.items()]
        pd.DataFrame(hist, columns=["user_id", "item_id", "part"]).to_parquet(d / "histories.parquet", index=False)
        save_item_table(self.items, d / "items.parquet")
        (d / "users.json").write_text(json.dumps(self.user_tokens))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> "P5Recommender":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

        d = Path(directory)
        meta = cls._read_config(d)
        config = RunConfig.model_validate(meta["params"])
        obj = cls(config, templates=TemplateSet.load(d / "templates.yaml"))
        obj.fit_info_ = meta.get("fit_info", {})
        obj.indexer = ItemIndexer.load(d)
        obj.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(d / "tokenizer"))
        if is_peft(config.model.tuning):
            base, _ = load_base(find_base_model(d, config.model.pretrained))
            obj.model = load_tuned(base, d)
        else:
            bconf = AutoConfig.from_pretrained(str(d / "backbone"))
            auto = AutoModelForSeq2SeqLM if getattr(bconf, "is_encoder_decoder", False) else AutoModelForCausalLM
            obj.model = auto.from_config(bconf)
            if config.model.frequency_filter:
                _add_filter(obj.model, config.model)
            state = load_file(str(d / WEIGHTS))
            missing, unexpected = obj.model.load_state_dict(state, strict=False)
            obj.model.tie_weights()
            # Only tensors tied to a loaded one may be absent from the file.
            params = obj.model.state_dict()
            loaded = {params[k].data_ptr() for k in state}
            untied = [k for k in missing if params[k].data_ptr() not in loaded]
            if unexpected or untied:
                raise ValueError(f"weights do not match the backbone: missing {untied}, unexpected {unexpected}")
        if device:
            obj.model.to(device)
        obj.model.eval()
        hist = pd.read_parquet(d / "histories.parquet")
        train = hist[hist["part"] == "train"]
        obj.train_history = group_sequences(train)
        valid = hist[hist["part"] == "valid"]
        obj.valid_item = dict(zip(valid["user_id"], valid["item_id"]))
        obj.items = load_item_table(d / "items.parquet")
        obj.user_tokens = json.loads((d / "users.json").read_text())
        obj._build_trie()
        return obj



def _add_filter(model, cfg) -> None:
    # BSARec's filter over a window of the history length.
    keep = kept_frequencies(cfg.frequency_cutoff)
    add_frequency_filter(model, cfg.frequency_filter, keep=keep, window=cfg.max_history, dropout=cfg.dropout)


def fingerprint(directory: Path) -> str:
    """Names and sizes of every file under a model directory: which base a tuned model needs."""
    entries = sorted(f"{p.relative_to(directory)}:{p.stat().st_size}" for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def find_base_model(directory: Path, recorded: str | None) -> Path:
    """The frozen base of the tuned model saved in ``directory``: where it was when trained, else
    at the same place relative to the model directory, else under a directory listed in
    ``$PROMPTREC_MODEL_PATH`` (os.pathsep-separated) by its folder name; the first with the
    recorded fingerprint."""
    meta_path = directory / BASE_FILE
    if not meta_path.exists():  # saved before base.json existed: the recorded path only
        return Path(str(recorded))
    meta = json.loads(meta_path.read_text())
    name = Path(meta["path"]).name
    tried = [Path(meta["path"]), (directory / meta["relative"]).resolve()]
    if recorded in PACKAGED:  # found (or converted) where this machine keeps it
        tried.insert(0, Path(resolve_model(recorded, "model.pretrained")))
    tried += [Path(p) / name for p in os.environ.get("PROMPTREC_MODEL_PATH", "").split(os.pathsep) if p]
    for candidate in tried:
        if candidate.is_dir() and fingerprint(candidate) == meta["fingerprint"]:
            return candidate
    raise FileNotFoundError(
        f"{directory} is tuned on base model {name!r}, found at none of: {', '.join(map(str, tried))}; "
        "put its folder under a directory named in PROMPTREC_MODEL_PATH"
    )


def load_base(path: str | Path, random_weights: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) to start from: a local transformers directory or a promptrec model directory.

    A promptrec directory gives its trained LM and tokenizer (item tokens included), which is how
    a model trained on one dataset starts training on another. A peft-tuned one is merged first.
    """
    d = Path(resolve_model(path, "model.pretrained"))
    if not (d / "promptrec_config.json").exists():
        return load_pretrained(d, random_weights)
    if random_weights:
        raise ValueError("model.random_weights=true applies to a transformers directory, not a promptrec model")
    rec = P5Recommender.from_pretrained(d)
    model = rec.model
    if model is not unwrap(model):
        if model.active_peft_config.is_prompt_learning:
            raise ValueError(
                f"{d} was tuned with soft prompts or prefixes, which cannot be merged into a base "
                f"model; start from its own base ({rec.config.model.pretrained}) instead"
            )
        model = model.merge_and_unload()
    return model, rec.tokenizer

