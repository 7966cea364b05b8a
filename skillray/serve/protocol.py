"""The OpenAI chat-completions wire format: request validation, responses and error bodies.

Only what a chat server needs. Unknown request fields are accepted and ignored (clients send
``stream_options``, ``user``, ``logprobs=false``...), as vLLM does; fields we cannot honour
(non-text content parts, ``logprobs=true``) are refused with HTTP 400. ``stream=true`` is answered
with server-sent ``chat.completion.chunk`` events.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed accepts
MAX_INT = 2**31 - 1  # counts beyond this are no one's real request (the server's own limits are far lower)
MAX_STOP_CHARS = 256


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The message content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``. ``steering`` is ours: parsed by the server's steering hook."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    # Every numeric field is range-checked here, so a bad value is this request's 400 and never reaches the
    # batch it would have joined (a seed beyond 64 bits once failed the whole batch in torch.manual_seed).
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    n: int = Field(1, ge=1, le=MAX_INT)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="torch.manual_seed's range")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    logprobs: bool | None = None
    steering: Any = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if len(v) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(v)}")
        if any(not s for s in v):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in v):
            raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return v


class RequestError(Exception):
    """A request the server refuses: becomes an OpenAI-style JSON error with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 504: "timeout_error"}.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return error_body(self.message, kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {message, type, param, code}}``: the shape the openai client parses."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse_request(body: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` (400) naming every bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            problems.append(f"{loc}: {err['msg']}")
        first = ".".join(str(x) for x in e.errors()[0]["loc"]) if e.errors() else None
        raise RequestError(400, "invalid request: " + "; ".join(problems), param=first) from None
    if req.logprobs:
        raise RequestError(400, "logprobs are not supported by this server", param="logprobs")
    return req


def completion_body(
    model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int, created: int | None = None
) -> dict:
    """A ``chat.completion`` object with ``usage`` token counts."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(created or time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens + completion_tokens),
        },
    }


def models_body(model: str, created: int) -> dict:
    """``GET /v1/models``: the one model this server serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "skillray"}]}
