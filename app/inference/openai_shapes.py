"""OpenAI's chat-completions wire format: the request body, the answer, the stream's chunks
and the error shape ({"error": {"message", "type", "param", "code"}}).

Only what the workers can do is accepted: text messages (a list of text parts is joined),
one choice (``n`` 1), at most four stop strings. Fields OpenAI has and we do not use
(``user``, ``presence_penalty``, ``logprobs`` …) are ignored, as most compatible servers do,
so a chat client's default body is never refused. ``backend`` is our extension.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.inference import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    MAX_STOP_STRINGS,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description="Only text parts: these models read text.")
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """POST /v1/chat/completions: OpenAI's body, and ``backend`` ("torch" or "mlx") to pick
    which worker serves a base model."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=1200)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    backend: Literal["torch", "mlx"] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings; got {len(value)}")
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("a stop string cannot be empty")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"n must be 1 (one answer per request); got {value}: send the "
                             "request again for another answer")
        return value

    def worker_messages(self) -> list[dict[str, str]]:
        return [{"role": ROLES[m.role], "content": m.text()} for m in self.messages]

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling(self) -> dict[str, Any]:
        """max_tokens, temperature, top_p, seed and stop as the worker takes them."""
        return {"max_tokens": self.max_completion_tokens or self.max_tokens
                or DEFAULT_MAX_TOKENS,
                "temperature": DEFAULT_TEMPERATURE if self.temperature is None
                else self.temperature,
                "top_p": DEFAULT_TOP_P if self.top_p is None else self.top_p,
                "seed": self.seed, "stop": self.stops()}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def stats(done: dict[str, Any], backend: str, device: str | None) -> dict[str, Any]:
    """Our extension to an answer: how fast it came, and where it ran."""
    return {"ttft_s": done.get("ttft_s"), "tokens_per_s": done.get("tokens_per_s"),
            "seconds": done.get("seconds"), "backend": backend, "device": device,
            "finish_reason": done.get("finish_reason")}


def completion(cid: str, model: str, text: str, done: dict[str, Any], backend: str,
               device: str | None, created: int | None = None) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": created or int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": done.get("finish_reason")}],
            "usage": usage(int(done.get("prompt_tokens") or 0),
                           int(done.get("completion_tokens") or 0)),
            "prospect": stats(done, backend, device)}


def chunk(cid: str, model: str, created: int, delta: dict[str, Any] | None = None,
          finish_reason: str | None = None, **more: Any) -> dict[str, Any]:
    """One chat.completion.chunk; ``delta`` None gives the usage-only chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **more}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                         separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def error_body(message: str, status: int, code: str | None = None,
               param: str | None = None, **extra: Any) -> dict[str, Any]:
    kind = "authentication_error" if status == 401 else \
        "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code,
                      **extra}}


def validation_error(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's RequestValidationError list as one OpenAI error naming the first field."""
    if not errors:
        return error_body("the request body is not valid", 422, "invalid_value")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    # A union's branch names ("str", "list[TextPart]") say nothing to the caller.
    param = ".".join(p for p in parts if not (p[:1].isalpha() and "[" in p) and p not in
                     ("str", "list", "int", "float", "bool", "none", "function-after"))
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if first.get("type") == "missing":
        msg = f"{param or 'a field'} is required"
    elif first.get("type") == "json_invalid":
        msg = "the body is not valid JSON: send a JSON object with model and messages"
    elif param:
        msg = f"{param}: {msg}"
    return error_body(msg, 422, "invalid_value" if first.get("type") != "missing"
                      else "missing_required_parameter", param or None)
