"""The OpenAI-compatible HTTP API (FastAPI): `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (streaming by server-sent events or not) and `/health`.

Route handlers only validate, turn the request into engine `Job`s and turn the engine's deltas
back into OpenAI's response shapes; the generation itself runs on the engine's worker thread.
Bodies are read by hand (not by FastAPI's body parameter) so that their size is bounded before
they are parsed, and every error has OpenAI's `{"error": {...}}` shape.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunewright.inference.engine import Delta, Engine, EngineBusy, Job, Sampling
from tunewright.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    new_id,
    now,
    usage,
)
from tunewright.serve.registry import ModelSet, ServedModel
from tunewright.serve.settings import ServeSettings

OPEN_ROUTES = {"/health"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)


def create_app(
    models: ModelSet,
    engine: Engine,
    settings: ServeSettings,
    *,
    is_open: Callable[[str], bool] | None = None,
) -> FastAPI:
    """The FastAPI application serving `models` through `engine`; `is_open(path)` names the
    paths served without the API key (default: OPEN_ROUTES)."""
    is_open = is_open or OPEN_ROUTES.__contains__
    app = FastAPI(title="tunewright", version="1")
    created = now()

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if settings.api_key and not is_open(request.url.path):
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key:
                return _error(
                    401,
                    "missing API key: send the header 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
            if not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
                return _error(401, "incorrect API key", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException):
        return _error(
            e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError):
        return _error(400, _validation_message(e.errors()))

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(models.served), **engine.load}

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [_model_card(m, created, models) for m in models.served.values()],
        }

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        return _model_card(_served(models, model_id), created, models)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionRequest, settings)
        served = _served(models, body.model)
        max_tokens = _check_limits(body, settings)
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        prompt = _check_length(
            models, models.chat_prompt_ids(served, messages), max_tokens, settings, "messages"
        )
        jobs = [(i, prompt) for i in range(body.n)]
        return await _respond(
            body, served, jobs, len(prompt), max_tokens, engine, settings, chat=True
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest, settings)
        served = _served(models, body.model)
        max_tokens = _check_limits(body, settings)
        prompts = body.prompts()
        if not prompts or len(prompts) > settings.max_prompts:
            raise ApiError(400, f"send 1 to {settings.max_prompts} prompts", param="prompt")
        encoded = [
            _check_length(models, models.tokenizer(p)["input_ids"], max_tokens, settings, "prompt")
            for p in prompts
        ]
        jobs = [(p * body.n + i, ids) for p, ids in enumerate(encoded) for i in range(body.n)]
        prompt_tokens = sum(len(ids) for ids in encoded)
        return await _respond(
            body, served, jobs, prompt_tokens, max_tokens, engine, settings, chat=False
        )

    return app


# --- request checks ---------------------------------------------------------------------------
async def _parse(request: Request, cls, settings: ServeSettings):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise ApiError(
            413, f"request body over {settings.max_request_bytes} bytes", code="request_too_large"
        )
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > settings.max_request_bytes:
            raise ApiError(
                413,
                f"request body over {settings.max_request_bytes} bytes",
                code="request_too_large",
            )
    try:
        return cls.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # bytes that are no JSON text
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except ValidationError as e:
        raise ApiError(400, _validation_message(e.errors()), param=_loc(e.errors()[0])) from None


def _served(models: ModelSet, name: str) -> ServedModel:
    if name not in models.served:
        raise ApiError(
            404,
            f"the model '{name}' does not exist; GET /v1/models lists the served ones: "
            f"{', '.join(models.served)}",
            param="model",
            code="model_not_found",
        )
    return models.served[name]


def _check_limits(body, settings: ServeSettings) -> int:
    if (feature := body.unsupported()) is not None:
        raise ApiError(400, f"'{feature}' is not supported by this server", param=feature)
    if body.n > settings.max_n:
        raise ApiError(
            400, f"n={body.n} is over this server's limit of {settings.max_n}", param="n"
        )
    max_tokens = body.token_limit or settings.default_max_tokens
    if max_tokens > settings.max_tokens:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens}",
            param="max_tokens",
        )
    return max_tokens


def _check_length(
    models: ModelSet, ids: list[int], max_tokens: int, settings: ServeSettings, param: str
) -> list[int]:
    limit = min(settings.max_prompt_tokens, models.max_context - max_tokens)
    if not ids or len(ids) > limit:
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens; with max_tokens={max_tokens} at most {limit} fit "
            f"(context {models.max_context})",
            param=param,
            code="context_length_exceeded",
        )
    return ids


# --- running jobs and shaping answers ------------------------------------------------------------
async def _respond(
    body,
    served: ServedModel,
    jobs: list[tuple[int, list[int]]],
    prompt_tokens: int,
    max_tokens: int,
    engine: Engine,
    settings: ServeSettings,
    *,
    chat: bool,
):
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
    deadline = time.monotonic() + settings.request_timeout_s
    submitted: list[Job] = []
    for index, ids in jobs:
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop or ()),
            seed=None if body.seed is None else body.seed + index,
        )
        job = Job(
            ids,
            sampling,
            lambda d, i=index: loop.call_soon_threadsafe(deltas.put_nowait, (i, d)),
            adapter=served.adapter,
            deadline=deadline,
        )
        try:
            engine.submit(job)
        except EngineBusy as e:
            for j in submitted:
                j.cancel()
            raise ApiError(503, str(e), type="server_error", code="server_busy") from None
        submitted.append(job)
    meta = {"id": new_id("chatcmpl" if chat else "cmpl"), "created": now(), "model": served.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(
            deltas, submitted, meta, prompt_tokens, include_usage, chat=chat, n_jobs=len(jobs)
        )
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    try:
        texts, finish, completion_tokens = {i: "" for i, _ in jobs}, {}, 0
        async with asyncio.timeout(settings.request_timeout_s + 5):  # the engine times out first
            while len(finish) < len(jobs):
                index, delta = await deltas.get()
                if delta.error:
                    status = 504 if "timed out" in delta.error else 500
                    raise ApiError(
                        status,
                        delta.error,
                        type="server_error",
                        code="timeout" if status == 504 else None,
                    )
                texts[index] += delta.text
                if delta.finish_reason:
                    finish[index] = delta.finish_reason
                    completion_tokens += delta.completion_tokens
    finally:
        for job in submitted:
            job.cancel()  # no-op for finished jobs; stops the rest when the client went away or one failed
    if chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "finish_reason": finish[i],
                "logprobs": None,
            }
            for i in sorted(texts)
        ]
        return {
            "object": "chat.completion",
            **meta,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
        }
    choices = [
        {"index": i, "text": texts[i], "finish_reason": finish[i], "logprobs": None}
        for i in sorted(texts)
    ]
    return {
        "object": "text_completion",
        **meta,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


async def _stream(
    deltas: asyncio.Queue,
    jobs: list[Job],
    meta: dict,
    prompt_tokens: int,
    include_usage: bool,
    *,
    chat: bool,
    n_jobs: int,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({'object': kind, **meta, 'choices': choices, **extra})}\n\n"

    finished, completion_tokens = 0, 0
    try:
        if chat:  # the first chunk of each choice announces the role
            yield event(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                    for i in range(n_jobs)
                ]
            )
        while finished < n_jobs:
            index, delta = await deltas.get()
            if delta.error:
                yield f"data: {json.dumps(error_body(delta.error, type='server_error'))}\n\n"
                return
            if delta.finish_reason:
                finished += 1
                completion_tokens += delta.completion_tokens
            if chat:
                choice = {
                    "index": index,
                    "delta": {"content": delta.text} if delta.text else {},
                    "finish_reason": delta.finish_reason,
                    "logprobs": None,
                }
            else:
                choice = {
                    "index": index,
                    "text": delta.text,
                    "finish_reason": delta.finish_reason,
                    "logprobs": None,
                }
            yield event([choice])
        if include_usage:
            yield event([], usage=usage(prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancel()  # the client disconnected, or we are done: either way nothing more is needed


# --- small helpers -----------------------------------------------------------------------------
def _model_card(m: ServedModel, created: int, models: ModelSet) -> dict:
    card = {"id": m.name, "object": "model", "created": created, "owned_by": "tunewright"}
    if m.adapter is not None:
        card["parent"] = next(s.name for s in models.served.values() if s.adapter is None)
    return card


def _error(status: int, message: str, *, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, code=code), status_code=status)


def _loc(error: dict) -> str:
    return ".".join(str(p) for p in error["loc"] if p != "body")


def _validation_message(errors: list[dict]) -> str:
    first = errors[0]
    where = _loc(first) or "body"
    return f"{where}: {first['msg']}" + (
        f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    )
