"""A careful client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

What recommending with a remote chat model needs beyond ``openai.AsyncOpenAI``:

- a **response cache** on disk, keyed by endpoint, model, messages and parameters, so that a
  rerun of an evaluation makes no request and returns the same answers (temperature 0 by default);
- **bounded concurrency** and **retries** with exponential backoff on 429, 5xx, time-outs, broken
  connections, malformed bodies and replies without choices; after the last retry the request is
  reported as failed (the recommender falls back) or, with ``on_failure="raise"``, an
  :class:`LLMError` says what happened;
- a **budget** (requests and tokens) checked before each request is sent;
- **counters** (requests, cache hits, retries, failures, prompt and completion tokens).

The API key is read from an environment variable and handed to the ``openai`` client only; no log
line of this module contains it (the tests grep the logs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class LLMError(RuntimeError):
    """A request failed for good (after its retries), or the endpoint cannot be used at all."""


class BudgetExceeded(LLMError):
    """The next request would pass the request or token budget; answers so far are cached."""


@dataclass
class Reply:
    """One chat completion: the text, the first position's top log-probabilities if returned
    (``{token: logprob}``), token usage, and whether it came from the cache."""

    content: str | None
    top_logprobs: dict[str, float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None  # set when the request failed for good and ``on_failure="fallback"``

    def to_json(self) -> str:
        return json.dumps(
            {"content": self.content, "top_logprobs": self.top_logprobs,
             "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        )

    @classmethod
    def from_json(cls, text: str) -> "Reply":
        return cls(**json.loads(text), cached=True)


@dataclass
class ClientStats:
    requests: int = 0  # sent to the endpoint, retries included
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # requests that failed for good
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # kind of failure -> count, retries included

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "cache_hits": self.cache_hits, "retries": self.retries,
            "failed_requests": self.failures, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "llm_wall_seconds": round(self.wall_seconds, 3),
            "errors": dict(self.errors),
        }


class ResponseCache:
    """Replies in one SQLite file, by the SHA-256 of the canonical request."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(base_url: str, model: str, messages: Messages, params: dict[str, Any]) -> str:
        canonical = json.dumps(
            {"endpoint": base_url.rstrip("/"), "model": model, "messages": messages, "params": params},
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def get(self, key: str) -> Reply | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return Reply.from_json(row[0]) if row else None

    def put(self, key: str, reply: Reply) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, reply.to_json()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class ChatClient:
    """Chat completions for many message lists at once, cached, bounded, retried and counted.

    Args:
        base_url: the endpoint's ``/v1`` address, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the endpoint serves.
        api_key_env: the environment variable holding the key (local servers accept any value;
            when the variable is unset, ``"none"`` is sent).
        cache_dir: where ``responses.sqlite`` lives; ``None`` turns the cache off.
        concurrency: requests in flight at most.
        max_retries: retries per request after the first try.
        timeout: seconds per try.
        backoff: the first retry's wait in seconds, doubled at each retry (with jitter).
        max_requests / max_tokens: the budget (requests sent; prompt + completion tokens), or None.
        on_failure: ``"fallback"`` (a failed request gives a :class:`Reply` with ``error`` set) or
            ``"raise"`` (:class:`LLMError`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = ".cache/promptrec-llm",
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        on_failure: str = "fallback",
    ) -> None:
        if on_failure not in ("fallback", "raise"):
            raise ValueError(f"on_failure must be 'fallback' or 'raise', got {on_failure!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.max_requests, self.max_tokens, self.on_failure = max_requests, max_tokens, on_failure
        self.cache = ResponseCache(Path(cache_dir) / "responses.sqlite") if cache_dir is not None else None
        self.stats = ClientStats()

    # The key is looked up when a client is made, never stored on ``self`` (nor in saved configs).
    def _openai(self):
        try:
            import openai
        except ImportError as e:  # pragma: no cover - the llm extra is missing
            raise ImportError("the llm recommender needs the openai package: pip install 'promptrec[llm]'") from e
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "none",
            max_retries=0, timeout=self.timeout,  # retries are ours: counted, logged, bounded
        )

    def complete(self, conversations: Sequence[Messages], **params: Any) -> list[Reply]:
        """One :class:`Reply` per message list, in order. ``params`` go to the endpoint as they
        are (``temperature``, ``max_tokens``, ``logprobs``, ``top_logprobs``, ``seed``, ...)."""
        start = time.perf_counter()
        try:
            return _run(self._complete_all(list(conversations), params))
        finally:
            self.stats.wall_seconds += time.perf_counter() - start

    async def _complete_all(self, conversations: list[Messages], params: dict[str, Any]) -> list[Reply]:
        client = self._openai()
        gate = asyncio.Semaphore(self.concurrency)
        try:
            tasks = [asyncio.ensure_future(self._one(client, gate, m, params)) for m in conversations]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            await client.close()

    def _check_budget(self) -> None:
        s = self.stats
        if self.max_requests is not None and s.requests >= self.max_requests:
            raise BudgetExceeded(
                f"request budget reached ({s.requests} of max_requests={self.max_requests}); the "
                "answers so far are cached, so a rerun with a larger budget continues from here"
            )
        used = s.prompt_tokens + s.completion_tokens
        if self.max_tokens is not None and used >= self.max_tokens:
            raise BudgetExceeded(
                f"token budget reached ({used} of max_tokens={self.max_tokens}); the answers so far "
                "are cached, so a rerun with a larger budget continues from here"
            )

    async def _one(self, client, gate: asyncio.Semaphore, messages: Messages, params: dict[str, Any]) -> Reply:
        key = ResponseCache.key(self.base_url, self.model, messages, params) if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit
        import openai

        last = ""
        async with gate:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.stats.retries += 1
                    wait = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                    log.info("retry %d/%d in %.2fs after %s", attempt, self.max_retries, wait, last)
                    await asyncio.sleep(wait)
                self._check_budget()
                self.stats.requests += 1
                try:
                    response = await client.chat.completions.create(model=self.model, messages=messages, **params)
                    reply = _reply(response)
                except openai.APIStatusError as e:
                    if e.status_code != 429 and e.status_code < 500:
                        # 4xx other than 429 will not get better by asking again.
                        raise LLMError(f"{self.base_url} refused the request: HTTP {e.status_code}: {_short(e.message)}") from None
                    last = f"HTTP {e.status_code}"
                except (openai.APITimeoutError, openai.APIConnectionError) as e:
                    last = "time-out" if isinstance(e, openai.APITimeoutError) else "connection error"
                except (openai.APIResponseValidationError, json.JSONDecodeError, _Malformed) as e:
                    last = f"malformed reply ({type(e).__name__})"
                else:
                    self.stats.prompt_tokens += reply.prompt_tokens
                    self.stats.completion_tokens += reply.completion_tokens
                    if key is not None:
                        self.cache.put(key, reply)
                    return reply
                self.stats.errors[last] = self.stats.errors.get(last, 0) + 1
        self.stats.failures += 1
        message = f"{self.base_url}: request failed after {self.max_retries + 1} tries, last: {last}"
        if self.on_failure == "raise":
            raise LLMError(message)
        log.warning("%s; falling back", message)
        return Reply(content=None, error=last)


class _Malformed(ValueError):
    pass


def _reply(response: Any) -> Reply:
    """The parts of a ``ChatCompletion`` that recommending uses; a reply without choices or
    content is malformed (retried, like a server error)."""
    if isinstance(response, (str, bytes)):  # a body that was not JSON reaches us as text
        raise _Malformed("body is not a JSON object")
    choices = getattr(response, "choices", None)
    if not choices:
        raise _Malformed("reply has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if content is None:
        raise _Malformed("reply has no message content")
    top = None
    lp = getattr(choice, "logprobs", None)
    if lp is not None and getattr(lp, "content", None):
        first = lp.content[0]
        top = {t.token: float(t.logprob) for t in (first.top_logprobs or [])}
        top.setdefault(first.token, float(first.logprob))
    usage = getattr(response, "usage", None)
    return Reply(
        content=content, top_logprobs=top,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _run(coro):
    """Run ``coro`` to completion, also from code that is already inside an event loop (Jupyter,
    the FastAPI server): there, in a worker thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
