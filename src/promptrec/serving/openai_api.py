"""The OpenAI chat protocol over the served model: ``GET /v1/models`` and
``POST /v1/chat/completions`` (JSON, or server-sent events with ``"stream": true``).

Any OpenAI client pointed at ``http://HOST:PORT/v1`` gets recommendations. The conversation is
rebuilt from the request's user messages on every call (the protocol is stateless) with
:class:`promptrec.serving.conversation.Conversation`: a user id (the request's ``user`` field, or "user
42" in a message), liked and disliked items, attribute constraints. The ranking comes from
:meth:`Server.rank`, the path of ``/recommend``, so a conversation that only names a user gets
exactly the items ``/recommend`` (and ``promptrec recommend``) give that user.

Besides the reply text, a completion carries two extra top-level fields, which OpenAI clients
keep (``completion.model_extra`` / ``completion.to_dict()`` in the ``openai`` package):
``recommendations`` (item id, title, score, rank) and ``conversation`` (grounded mentions,
session state, strategy). A stream sends them in its last chunk, before ``data: [DONE]``.

The bodies mirror ``openai.types.chat.ChatCompletion`` and ``ChatCompletionChunk`` and are
checked against them in the tests; the server itself does not need the ``openai`` package.
Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``. A conversation
can name any user and answer from their history, so ``/v1/chat/completions`` needs a key with the
``read`` scope, like ``/recommend``, sent as OpenAI clients send theirs (``Authorization: Bearer``;
``api_key=`` in the ``openai`` package); ``/v1/models`` says nothing about users and is open.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .security import printable, validation_errors

if TYPE_CHECKING:
    from .app import Server, ServeSettings
    from .worker import ModelPool

DEFAULT_K = 10
PREFIX = "/v1/"


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


# -- request -----------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str = Field(max_length=64)
    text: str | None = Field(None, max_length=100_000)


class ChatMessage(BaseModel):
    # Clients send back assistant messages as they got them (refusal, tool_calls, ...): ignored.
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = Field(None, max_length=100_000)
    name: str | None = Field(None, max_length=256)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; parameters about sampling text have no effect here.
    Unknown keys are an error (a misspelled ``k`` should not silently give 10 items)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not k = 1

    model: str = Field(max_length=256, description="the name in GET /v1/models")
    messages: list[ChatMessage] = Field(max_length=1000)
    stream: bool | None = False
    k: int | None = Field(None, ge=1, le=1000, description=f"number of items (default {DEFAULT_K}); promptrec's own field")
    user: str | None = Field(None, max_length=256, description="the promptrec user id whose history to start from")
    n: int | None = Field(None, ge=1, le=128, description="only 1 is supported")
    stream_options: dict[str, Any] | None = None
    # Accepted for compatibility with clients that always send them; they change nothing.
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


# -- response (the fields of openai.types.chat.ChatCompletion / ChatCompletionChunk) -----------
class Recommendation(BaseModel):
    item_id: str
    title: str | None
    score: float
    rank: int


class GroundedMention(BaseModel):
    turn: int = Field(description="index of the user message, from 0")
    kind: Literal["item", "attribute", "user"]
    value: str
    text: str
    polarity: Literal["like", "dislike"]
    score: float
    column: str | None = None
    title: str | None = None


class ConversationState(BaseModel):
    user_id: str | None
    liked: list[str]
    disliked: list[str]
    required: dict[str, list[str]]
    banned: dict[str, list[str]]
    mentions: list[GroundedMention]
    strategy: str = Field(description="model, popularity (no history: cold start) or none (filters left nothing)")
    note: str | None
    model_version: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    system_fingerprint: str | None = None
    recommendations: list[Recommendation]
    conversation: ConversationState


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    recommendations: list[Recommendation] | None = None
    conversation: ConversationState | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "promptrec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ERRORS = {
    400: {"description": "invalid request (OpenAI error shape)"},
    404: {"description": "unknown model (OpenAI error shape)"},
    503: {"description": "no model loaded yet, or its process is restarting (OpenAI error shape)"},
}


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    errors = validation_errors(err.errors(), limit=1)  # without the input, always encodable
    first = errors[0] if errors else {"loc": [], "msg": "invalid value", "type": ""}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    if first["type"] == "json_invalid":
        return first["msg"], None
    if first["type"] == "extra_forbidden":
        return f"unsupported parameter: {param}", param
    return f"{param or 'body'}: {first['msg']}", param


def add_openai_routes(app: FastAPI, server: Server, settings: ServeSettings) -> None:
    """Register /v1/models and /v1/chat/completions on ``app``."""
    from .conversation import Conversation

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, err: OpenAIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        if not request.url.path.startswith(PREFIX):
            return JSONResponse({"detail": validation_errors(err.errors())}, status_code=422)
        message, param = _validation_message(err)
        return OpenAIError(400, message, param=param).response()

    def engine() -> ModelPool:
        if server.engine is None:
            raise OpenAIError(503, "no model loaded yet", "server_error", code="model_not_loaded")
        return server.engine

    def created(eng: ModelPool) -> int:
        try:
            return int((eng.model_dir / "promptrec_config.json").stat().st_mtime)
        except OSError:
            return 0

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models() -> ModelList:
        """The served model, under the name chat requests must give."""
        return ModelList(data=[ModelCard(id=settings.model_name, created=created(engine()))])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERRORS)
    async def model(model_id: str) -> ModelCard:
        if model_id != settings.model_name:
            raise OpenAIError(404, f"the model {printable(model_id, 100)!r} does not exist; this server serves {settings.model_name!r}",
                              param="model", code="model_not_found")
        return ModelCard(id=settings.model_name, created=created(engine()))

    async def complete(body: ChatRequest) -> tuple[ChatCompletion, list[str]]:
        """The completion for ``body``, and its text cut into the pieces a stream sends."""
        eng = engine()
        if body.model != settings.model_name:
            raise OpenAIError(404, f"the model {body.model!r} does not exist; this server serves {settings.model_name!r}",
                              param="model", code="model_not_found")
        if body.n not in (None, 1):
            raise OpenAIError(400, "only n=1 is supported", param="n")
        k = body.k or DEFAULT_K
        if k > settings.max_k:
            raise OpenAIError(400, f"k is {k}; this server allows at most {settings.max_k}", param="k")
        turns = [m.text() for m in body.messages if m.role == "user"]
        if not any(t.strip() for t in turns):
            raise OpenAIError(400, "messages must contain a user message with text", param="messages")

        def converse() -> Any:
            try:
                catalogue = eng.grounding()
            except ImportError as err:
                raise OpenAIError(501, str(err), "server_error", code="missing_dependency") from err
            conv = Conversation(catalogue, user_id=body.user, k=k)
            for t in turns:
                conv.update(t)
            return conv

        conv = await run_in_threadpool(converse)
        plan = conv.plan(k)
        ranked: Sequence[tuple[str, float]] = []
        strategy = "none"
        version = eng.version
        if plan is not None:
            answer, _ = await server.rank(
                eng, plan.user_id or "", plan.fetch, candidates=plan.candidates, liked=plan.liked
            )
            ranked = [(r.item_id, r.score) for r in answer.items]
            strategy, version = answer.strategy, answer.model_version or version
        reply = conv.reply(plan, ranked, strategy, k)
        state = reply.state
        mentions = [GroundedMention(turn=n, **m.__dict__) for n, ms in enumerate(conv.turns) for m in ms]
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=settings.model_name,
            choices=[Choice(message=AssistantMessage(content=reply.text))],
            system_fingerprint=version,
            recommendations=[Recommendation(**r.__dict__) for r in reply.items],
            conversation=ConversationState(
                **state, mentions=mentions, strategy=reply.strategy, note=reply.note, model_version=version
            ),
        )
        return completion, reply.text.splitlines(keepends=True)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={
        **ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "a completion, or with stream: SSE chunks"},
        401: {"description": "no API key, or an unknown one (OpenAI error shape)"},
        403: {"description": "the key lacks the read scope (OpenAI error shape)"},
    })
    async def chat_completions(body: ChatRequest) -> Any:
        """Recommendations from a conversation; ``"stream": true`` answers with server-sent
        events in OpenAI's chunk format, ending with ``data: [DONE]``."""
        completion, pieces = await complete(body)
        if not body.stream:
            return completion
        return StreamingResponse(_stream(completion, pieces), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})


async def _stream(completion: ChatCompletion, pieces: list[str]) -> AsyncIterator[bytes]:
    """The completion as OpenAI streams one: the role first, the text line by line, then an empty
    delta with the finish reason, the recommendations and the conversation."""
    base = {"id": completion.id, "created": completion.created, "model": completion.model,
            "system_fingerprint": completion.system_fingerprint}

    def event(chunk: ChatCompletionChunk) -> bytes:
        return f"data: {chunk.model_dump_json()}\n\n".encode()

    yield event(ChatCompletionChunk(**base, choices=[ChunkChoice(delta=Delta(role="assistant", content=""))]))
    for piece in pieces:
        yield event(ChatCompletionChunk(**base, choices=[ChunkChoice(delta=Delta(content=piece))]))
    yield event(ChatCompletionChunk(
        **base, choices=[ChunkChoice(delta=Delta(), finish_reason="stop")],
        recommendations=completion.recommendations, conversation=completion.conversation,
    ))
    yield b"data: [DONE]\n\n"


def sse_events(raw: str) -> list[dict[str, Any] | str]:
    """The ``data:`` payloads of a server-sent event stream: parsed JSON, or ``"[DONE]"``."""
    out: list[dict[str, Any] | str] = []
    for block in raw.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: "):]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


__all__ = ["ChatCompletion", "ChatCompletionChunk", "ChatRequest", "OpenAIError", "add_openai_routes", "sse_events"]
