"""``llm``: a chat model behind any OpenAI-compatible endpoint, as a recommender.

Two modes:

- **generate**: the model is shown the user's history and names ``k`` items;
- **rerank**: a retriever (any registered recommender) proposes ``candidates`` items, labelled
  A, B, C, ...; the model orders them. Where the endpoint returns log-probabilities
  (``logprobs=True``), the candidates are scored in one call by the probability of their label as
  the first answer token, as LlamaRec does, instead of by parsing the reply.

Every answer is grounded (:mod:`promptrec.models.llm.grounding`); items of the history and repeats are
dropped, and a list left shorter than ``k`` is filled from the retriever's ranking, which is
counted. Prompts come from the template file (families ``chat`` and ``chat_rerank``, or any
family whose fields the prompt needs, e.g. a P5 ``sequential`` template for a promptrec decoder
model served by ``transformers serve``); few-shot demonstrations come from *other* users'
training sequences only.

``stats()`` reports what an evaluation needs beside accuracy: invalid-answer, parse-failure and
fill rates, requests, cache hits, tokens and wall time.
"""

from __future__ import annotations

import json
import logging
import string
import zlib
from pathlib import Path
from typing import Any, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from ...core.recommender import (
    RECOMMENDERS,
    Recommender,
    build_recommender,
    check_k,
    check_stage,
    load_recommender,
    recommendation_frame,
)
from ...data.split import Split
from ...prompts.templates import TemplateSet
from .client import BudgetExceeded, ChatClient
from .grounding import Grounder

log = logging.getLogger(__name__)

MODES = ("generate", "rerank")
ITEM_FORMATS = ("title", "code")
CANDIDATE_ORDERS = ("retriever", "shuffled")


def _by_votes(lists: list[list[str]]) -> list[str]:
    """Items of several ranked lists by how many lists hold them, then by first appearance."""
    if len(lists) == 1:
        return lists[0]
    votes: dict[str, int] = {}
    for items in lists:
        for i in items:
            votes[i] = votes.get(i, 0) + 1
    return sorted(votes, key=lambda i: -votes[i])  # stable: first appearance breaks ties


def labels(n: int) -> list[str]:
    """A, B, ..., Z, AA, AB, ...: short, one token in most vocabularies, never a title."""
    letters = string.ascii_uppercase
    out = list(letters) + [a + b for a in letters for b in letters]
    if n > len(out):
        raise ValueError(f"at most {len(out)} labelled candidates, got {n}")
    return out[:n]


@RECOMMENDERS.register("llm")
class LLMRecommender(Recommender):
    """Recommend with a chat model over the OpenAI protocol (module doc).

    Args:
        base_url / model: the endpoint (``http://host:port/v1``) and the model name it serves.
        mode: ``"generate"`` or ``"rerank"``.
        template: template id; default ``chat-1`` (generate) or ``chat-rerank-1`` (rerank).
        templates: a template file (default: promptrec's own).
        shots: few-shot demonstrations per prompt, from other users' training data.
        retriever / retriever_params: the registered recommender that proposes candidates and
            fills short lists (fitted on the same split), e.g. ``"popularity"`` or ``"sasrec"``,
            or the directory of one saved after fitting on the same split.
        candidates: how many the retriever proposes in rerank mode.
        candidate_order: ``"retriever"`` (labels A, B, ... in the retriever's order) or
            ``"shuffled"`` (in a random order seeded by the user, as LLMRank does: a model that
            only repeats the first letters then scores at chance, not at the retriever's level).
        max_history: the most recent items shown.
        item_format: ``"title"`` (general chat models) or ``"code"`` (a promptrec decoder model
            that reads and writes item codes; ``codes_from`` is its saved model directory).
        logprobs: rerank by label log-probabilities (the endpoint must return ``top_logprobs``).
        threshold: the least fuzzy score (0-100) for a title to count as a catalogue item.
        temperature / max_tokens / seed: sampling parameters sent with every request; without
            ``max_tokens``, a bound from ``k`` and the answer format (a label costs one or two
            tokens, a title up to about 24).
        stop: strings that end a reply, e.g. ``["\\n\\n", "\\nUser:"]`` for a base model behind a
            transcript chat template, which otherwise writes the next turns itself until
            ``max_tokens``. None by default: ``transformers serve`` (5.x) scans the whole
            vocabulary for every request with stop strings (about 2 s for Gemma's 262k tokens on
            one thread, the time of ten generated tokens), so a tight ``max_tokens`` is cheaper
            for short answers such as letters.
        separator: what joins the items of a demonstration's answer: ``"\n"`` (one per line) or
            ``" "`` (labels on one line, one token each: half the tokens to generate); the
            template's wording asks for the same.
        samples: replies per user (seeds ``seed``, ``seed + 1``, ...; needs ``temperature > 0``);
            items are ranked by how many replies name them, ties by first mention. For models
            that name one item per reply, such as a promptrec decoder behind a plain server.
        api_key_env, cache_dir, concurrency, max_retries, timeout, max_requests, max_tokens_total,
        on_failure: see :class:`promptrec.models.llm.client.ChatClient`.
        max_users: the most users this object asks the model about (until :meth:`reset_stats`);
            a call that would pass it raises :class:`~promptrec.models.llm.client.BudgetExceeded` first.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        mode: str = "generate",
        template: str | None = None,
        templates: str | None = None,
        shots: int = 0,
        retriever: str = "popularity",
        retriever_params: dict[str, Any] | None = None,
        candidates: int = 20,
        candidate_order: str = "retriever",
        max_history: int = 20,
        item_format: str = "title",
        codes_from: str | None = None,
        logprobs: bool = False,
        threshold: float = 85.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        separator: str = "\n",
        seed: int | None = 0,
        samples: int = 1,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | None = ".cache/promptrec-llm",
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 60.0,
        max_requests: int | None = None,
        max_tokens_total: int | None = None,
        max_users: int | None = None,
        on_failure: str = "fallback",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if item_format not in ITEM_FORMATS:
            raise ValueError(f"item_format must be one of {ITEM_FORMATS}, got {item_format!r}")
        if item_format == "code" and not codes_from:
            raise ValueError("item_format='code' needs codes_from: the saved promptrec model whose item codes the LLM speaks")
        if candidate_order not in CANDIDATE_ORDERS:
            raise ValueError(f"candidate_order must be one of {CANDIDATE_ORDERS}, got {candidate_order!r}")
        if separator not in ("\n", " "):
            raise ValueError(f"separator must be '\\n' or ' ', got {separator!r}")
        if logprobs and mode != "rerank":
            raise ValueError("logprobs scoring ranks labelled candidates: it needs mode='rerank'")
        if shots < 0 or candidates < 1 or max_history < 1 or samples < 1:
            raise ValueError("shots must be >= 0; candidates, max_history and samples >= 1")
        if samples > 1 and (temperature <= 0 or seed is None):
            raise ValueError("samples > 1 draws different replies: it needs temperature > 0 and a seed")
        self.params = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.params["stop"] = list(stop) if stop else None  # a list: the config is JSON
        self.params["template"] = template or ("chat-1" if mode == "generate" else "chat-rerank-1")
        self.template = TemplateSet.load(templates).get(self.params["template"])
        self.client = ChatClient(
            base_url, model, api_key_env=api_key_env, cache_dir=cache_dir, concurrency=concurrency,
            max_retries=max_retries, timeout=timeout, max_requests=max_requests,
            max_tokens=max_tokens_total, on_failure=on_failure,
        )
        self._reset_counts()

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    # -------------------------------------------------------------------------------- fitting
    def fit(self, split: Split, retriever: Recommender | None = None) -> Self:
        """``retriever``: an already fitted recommender of ``split`` to use instead of fitting one."""
        p = self.params
        if retriever is not None:
            self.retriever_ = retriever
        elif Path(p["retriever"]).is_dir():  # a saved model of the same data: used as it is
            self.retriever_ = load_recommender(p["retriever"])
        else:
            self.retriever_ = build_recommender(p["retriever"], **(p["retriever_params"] or {})).fit(split)
        items = split.data.items
        titles = items["title"] if "title" in items.columns else pd.Series(items.index, index=items.index)
        # An item without a title is still in the catalogue (it can be named by id).
        self.titles_ = {str(i): t if isinstance(t, str) else "" for i, t in titles.items()}
        self.train_ = split.train_sequences()
        self.histories_ = {stage: split.history(stage) for stage in ("valid", "test")}
        self.fit_info_ = {"retriever": self.retriever_.name}
        self._prepare()
        return self

    def _prepare(self) -> None:
        codes = None
        if self.params["item_format"] == "code":
            from ...indexing import ItemIndexer

            indexer = ItemIndexer.load(self.params["codes_from"])
            self._code = {}
            for i in self.titles_:
                try:
                    self._code[i] = indexer.text(i)
                except KeyError:
                    pass  # an item the model never saw has no code: it cannot be named
            codes = {c: i for i, c in self._code.items()}
        self.grounder_ = Grounder(self.titles_, codes=codes, threshold=self.params["threshold"])
        self._demo_users = sorted(u for u, s in self.train_.items() if len(s) >= 2)

    def _check_fitted(self) -> None:
        if not hasattr(self, "grounder_"):
            raise RuntimeError("LLMRecommender is not fitted: call fit(split) first")

    # -------------------------------------------------------------------------------- prompts
    def _item(self, item: str) -> str:
        if self.params["item_format"] == "code":
            return self._code.get(item, "<unk>")
        return self.titles_.get(item) or item

    def _history(self, items: Sequence[str]) -> str:
        items = list(items)[-self.params["max_history"] :]
        if not items:
            return "none" if self.params["item_format"] == "code" else "(nothing yet)"
        if self.params["item_format"] == "code":
            return " ".join(self._item(i) for i in items)
        return "\n".join(f"{n}. {self._item(i)}" for n, i in enumerate(items, 1))

    def _candidates(self, items: Sequence[str]) -> tuple[str, dict[str, str]]:
        labelled = dict(zip(labels(len(items)), items))
        if self.params["item_format"] == "code":
            return " ".join(self._item(i) for i in items), labelled  # as in promptrec's training
        return "\n".join(f"{lab}. {self._item(i)}" for lab, i in labelled.items()), labelled

    def _answer(self, items: Sequence[str], labelled: dict[str, str] | None = None) -> str:
        if labelled is not None:
            back = {i: lab for lab, i in labelled.items()}
            return self.params["separator"].join(back[i] for i in items)
        return "\n".join(self._item(i) for i in items)

    def _render(self, user: str, history: Sequence[str], k: int, cands: Sequence[str] | None) -> tuple[str, dict | None]:
        fields = {"user": "the user", "history": self._history(history), "k": str(k), "target": ""}
        labelled = None
        if cands is not None:
            fields["candidates"], labelled = self._candidates(cands)
        return self.template.render_input(fields), labelled

    def _demos(self, user: str, k: int) -> list[dict[str, str]]:
        """``shots`` (question, answer) turns from other users' training sequences, chosen by a
        seed of the user id, so a prompt never changes between runs (and stays cached)."""
        rng = self._demo_rng(user)
        turns: list[dict[str, str]] = []
        for other in self._demo_pool(user, rng):
            seq = self.train_[other]
            t = int(rng.integers(1, len(seq)))
            history, nxt = seq[:t], seq[t : t + k]
            if self.params["mode"] == "rerank":
                others = [i for i in self._catalogue_sample(rng, self.params["candidates"]) if i not in seq]
                cands = (nxt + others)[: self.params["candidates"]]
                cands = [cands[j] for j in rng.permutation(len(cands))]
                question, labelled = self._render(other, history, k, cands)
                answer = self._answer([i for i in nxt if i in cands], labelled)
            else:
                question, _ = self._render(other, history, k, None)
                answer = self._answer(nxt)
            turns += [{"role": "user", "content": question},
                      {"role": "assistant", "content": self.template.target.replace("{target}", answer)}]
        return turns

    def _opening(self) -> list[dict[str, str]]:
        """The template's text before ``{target}`` (``"Best candidates: {target}"``), sent as the
        start of the answer: a final assistant message, which a base model's transcript template
        leaves open, so that the natural continuation is the answer itself."""
        opening = self.template.target.split("{target}")[0].rstrip()
        return [{"role": "assistant", "content": opening}] if opening else []

    def _demo_rng(self, user: str, salt: int = 0) -> np.random.Generator:
        # A ``salt`` keeps the candidate order independent of the demonstrations' draws (which
        # keep their seed without one, so their prompts and cache entries stay as they were).
        key = [self.params["seed"] or 0, zlib.crc32(user.encode())]
        return np.random.default_rng(key + [salt] if salt else key)

    def _demo_pool(self, user: str, rng: np.random.Generator | None = None) -> list[str]:
        """The ``shots`` other users whose training sequences make ``user``'s demonstrations."""
        shots = self.params["shots"]
        if not shots:
            return []
        rng = rng or self._demo_rng(user)
        drawn = rng.choice(self._demo_users, min(len(self._demo_users), shots + 1), replace=False)
        return [str(u) for u in drawn if u != user][:shots]

    def _catalogue_sample(self, rng: np.random.Generator, n: int) -> list[str]:
        ids = list(self.titles_)
        return [ids[j] for j in rng.choice(len(ids), min(n, len(ids)), replace=False)]

    # ------------------------------------------------------------------------------ recommending
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        stage: str = "test",
        histories: Mapping[str, Sequence[str]] | None = None,
        candidates: Mapping[str, Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        """The retriever proposes (within ``candidates`` where given), the LLM names or orders,
        the retriever's list fills what the reply leaves short."""
        self._check_fitted()
        check_stage(stage)
        k = check_k(k)
        users = [user_ids] if isinstance(user_ids, str) else [str(u) for u in user_ids]
        if not users:
            return recommendation_frame([], [], [], [])
        p = self.params
        if p["max_users"] is not None and self._count["users"] + len(users) > p["max_users"]:
            raise BudgetExceeded(
                f"user budget: {self._count['users']} users asked so far, {len(users)} more would pass "
                f"max_users={p['max_users']}"
            )
        rerank = p["mode"] == "rerank"
        depth = max(k, p["candidates"]) if rerank else 2 * k  # room to fill after drops
        retrieved = self.retriever_.recommend(
            users, k=depth, exclude_seen=exclude_seen, stage=stage, histories=histories, candidates=candidates
        )
        by_user = {u: list(g["item_id"]) for u, g in retrieved.groupby("user_id", sort=False)}
        known = {u: self.current_history(u, stage, histories) for u in users}

        conversations, labelled = [], []
        for u in users:
            history = known[u]
            cands = by_user.get(u, [])[: p["candidates"]] if rerank else None
            if cands and p["candidate_order"] == "shuffled":
                cands = [cands[j] for j in self._demo_rng(u, salt=1).permutation(len(cands))]
            question, lab = self._render(u, history, k, cands)
            conversations.append([*self._demos(u, k), {"role": "user", "content": question}, *self._opening()])
            labelled.append(lab)
        request = {"temperature": p["temperature"]}
        if p["max_tokens"]:
            request["max_tokens"] = p["max_tokens"]
        elif rerank and p["item_format"] == "title":
            request["max_tokens"] = 2 * k + 2  # a label and a separator each, a leading newline
        else:
            request["max_tokens"] = 8 * k if p["item_format"] == "code" else 24 * k
        if p["stop"]:
            request["stop"] = p["stop"]
        if p["logprobs"]:
            request.update(logprobs=True, top_logprobs=min(20, p["candidates"]))
        # One reply per user, or ``samples`` replies drawn with consecutive seeds (each its own
        # cache entry), whose items are ranked by how many replies name them.
        seeds = [None if p["seed"] is None else p["seed"] + j for j in range(p["samples"])]
        replies = [
            self.client.complete(conversations, **request, **({} if s is None else {"seed": s})) for s in seeds
        ]

        rows_u, rows_i, rows_s, rows_r = [], [], [], []
        for n, (u, lab) in enumerate(zip(users, labelled)):
            seen = set(known[u]) if exclude_seen else set()
            ranked = _by_votes([self._ranked(r[n], lab, seen) for r in replies])
            if candidates is not None and u in candidates:  # a named item outside the list is dropped
                allowed = set(candidates[u])
                ranked = [i for i in ranked if i in allowed]
            self._count["users"] += 1
            named = len(ranked)
            fill = [i for i in by_user.get(u, []) if i not in ranked and i not in seen]
            ranked = (ranked + fill)[:k]
            self._count["filled"] += max(0, len(ranked) - min(named, k))
            self._count["slots"] += k
            for r, item in enumerate(ranked, 1):
                rows_u.append(u)
                rows_i.append(item)
                rows_s.append(float(k - r + 1))  # rank-based: the reply is an order, not scores
                rows_r.append(r)
        return recommendation_frame(rows_u, rows_i, rows_s, rows_r)

    def _ranked(self, reply, labelled: dict[str, str] | None, seen: set[str]) -> list[str]:
        """The reply's items in order, grounded, without history items; counts what it drops."""
        c = self._count
        c["replies"] += 1
        if reply.error is not None:
            c["failed"] += 1
            c["parse_failures"] += 1
            return []
        if labelled is not None and self.params["logprobs"] and reply.top_logprobs:
            # LlamaRec: a candidate's score is its label's log-probability as the first token.
            scores = {lab: lp for tok, lp in reply.top_logprobs.items() if (lab := tok.strip()) in labelled}
            order = sorted(scores, key=lambda lab: -scores[lab])
            items = [labelled[lab] for lab in order]
            c["named"] += len(items)
            c["history_dropped"] += sum(i in seen for i in items)
            return [i for i in items if i not in seen]
        g = self.grounder_.ground(reply.content, labelled)
        c["named"] += g.named
        c["invalid"] += g.invalid
        c["duplicates"] += g.duplicates
        c["parse_failures"] += g.parse_failure
        items = g.items
        if labelled is not None:
            allowed = set(labelled.values())
            c["off_candidates"] += sum(i not in allowed for i in items)
            items = [i for i in items if i in allowed]
        c["history_dropped"] += sum(i in seen for i in items)
        return [i for i in items if i not in seen]

    # -------------------------------------------------------------------------------- reporting
    def _reset_counts(self) -> None:
        self._count = dict.fromkeys(
            ("users", "replies", "named", "invalid", "duplicates", "history_dropped", "off_candidates", "parse_failures",
             "failed", "filled", "slots"), 0
        )

    def stats(self) -> dict[str, Any]:
        """Rates and costs since the last :meth:`reset_stats` (or since construction)."""
        c = self._count
        out = {
            "llm_users": c["users"],
            "invalid_answer_rate": c["invalid"] / c["named"] if c["named"] else 0.0,
            "parse_failure_rate": c["parse_failures"] / c["replies"] if c["replies"] else 0.0,
            "fill_rate": c["filled"] / c["slots"] if c["slots"] else 0.0,
            "named_per_reply": c["named"] / c["replies"] if c["replies"] else 0.0,
            "history_dropped": c["history_dropped"],
            "duplicates_dropped": c["duplicates"],
            "off_candidates": c["off_candidates"],
            "failed_replies": c["failed"],
        }
        return out | self.client.stats.as_dict()

    def reset_stats(self) -> None:
        from .client import ClientStats

        self._reset_counts()
        self.client.stats = ClientStats()

    # -------------------------------------------------------------------- what the model knows
    def history(self, user: str, stage: str = "test") -> list[str]:
        check_stage(stage)
        return list(self.histories_[stage].get(str(user), []))

    def stage_histories(self, stage: str) -> Mapping[str, Sequence[str]]:
        return self.histories_[check_stage(stage)]

    def catalogue(self) -> list[str]:
        self._check_fitted()
        return list(self.titles_)

    def item_table(self) -> pd.DataFrame:
        return pd.DataFrame({"title": pd.Series(self.titles_, dtype=object)}).rename_axis("item_id")

    # ------------------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        self._check_fitted()
        path = self._write_config(directory)
        self.retriever_.save_pretrained(path / "retriever")
        state = {"titles": self.titles_, "train": self.train_, "histories": self.histories_}
        (path / "state.json").write_text(json.dumps(state))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        path = Path(directory)
        config = cls._read_config(path)
        rec = cls(**config["params"])
        rec.retriever_ = load_recommender(path / "retriever")
        state = json.loads((path / "state.json").read_text())
        rec.titles_, rec.train_, rec.histories_ = state["titles"], state["train"], state["histories"]
        rec.fit_info_ = config.get("fit_info", {})
        rec._prepare()
        return rec
