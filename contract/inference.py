"""What the server and an inference worker say to each other: JSON lines.

The server starts one worker per loaded base model (``python -m workers.torch.serve`` or
``python -m workers.mlx.serve`` with ``--model PATH``) and talks to it over its stdin and
stdout, one JSON object per line; the worker's free text (warnings, tracebacks) goes to its
stderr, which the server sends to a log file. The worker exits when its stdin closes: the
server is gone or done with it.

Requests, server -> worker
    {"op": "generate", "id": str, "messages": [{"role": str, "content": str}, ...],
     "adapter": str | null (an adapter folder; null: the base model, adapter switched off),
     "max_tokens": int, "temperature": float (0: greedy), "top_p": float,
     "seed": int | null, "stop": [str, ...]}
    {"op": "cancel", "id": str}      stop that generation after the token in hand
    {"op": "shutdown"}               exit now (the same as closing stdin)

Replies, worker -> server
    {"type": "ready", "backend", "model", "device", "dtype", "context_length": int,
     "memory_bytes": int, "load_s": float}                          once, after loading
    {"type": "start", "id", "prompt_tokens": int}                   the prompt was accepted
    {"type": "token", "id", "text": str, "ids": [int, ...]}         new text and its tokens
    {"type": "done", "id", "finish_reason": "stop" | "length" | "cancelled",
     "prompt_tokens": int, "completion_tokens": int, "ttft_s": float, "tokens_per_s": float,
     "seconds": float, "memory_bytes": int}
    {"type": "error", "id": str | null, "status": int, "error_type": str, "message": str,
     "hint": str}                                                   the request failed
A generation answers ``start`` (or ``error``), then ``token``s, then exactly one ``done`` or
``error``. An ``error`` with ``id`` null before ``ready`` means the model did not load (the
worker exits after it). ``status`` is the HTTP status the server should answer with: 422 for
a prompt longer than the model's context or an adapter that does not fit this model, 500 for
anything else.
"""

from __future__ import annotations

import json
from typing import Any

OPS = ("generate", "cancel", "shutdown")
REPLIES = ("ready", "start", "token", "done", "error")
FINISH_REASONS = ("stop", "length", "cancelled")

# Sampling defaults: the OpenAI API's (temperature 1, top_p 1). The playground sends
# temperature 0 (greedy) so that a comparison is repeatable.
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
MAX_STOP_STRINGS = 4


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line (no newline inside: JSON escapes them)."""
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    """One line back to a message; ValueError when it is not a JSON object."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def generate_request(id: str, messages: list[dict[str, str]], adapter: str | None = None, *,
                     max_tokens: int = DEFAULT_MAX_TOKENS,
                     temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
                     seed: int | None = None, stop: list[str] | None = None) -> dict[str, Any]:
    return {"op": "generate", "id": id, "messages": messages, "adapter": adapter,
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "stop": list(stop or [])}


def error_reply(id: str | None, message: str, hint: str = "", *, status: int = 500,
                error_type: str = "generation") -> dict[str, Any]:
    return {"type": "error", "id": id, "status": status, "error_type": error_type,
            "message": message, "hint": hint}
