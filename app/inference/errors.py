"""An inference request that cannot be served: the HTTP status and OpenAI's error fields."""

from __future__ import annotations

from typing import Any


class InferenceError(Exception):
    """``status`` is the HTTP answer; ``code`` OpenAI's (model_not_found, memory, …);
    ``param`` the request field at fault; ``extra`` more for the body (a memory plan)."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.extra = extra

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        return "invalid_request_error" if self.status < 500 else "server_error"


# contract/inference.py's error_type -> OpenAI's code
CODES = {"context_length": "context_length_exceeded", "adapter": "adapter_mismatch",
         "load": "model_load_failed", "memory": "memory", "worker_exited": "worker_exited",
         "unloaded": "model_unloaded"}


def from_reply(reply: dict[str, Any]) -> InferenceError:
    """A worker's ``error`` reply as an InferenceError (its hint joined to the message)."""
    message = str(reply.get("message") or "the inference worker failed")
    hint = reply.get("hint")
    if hint:
        message = f"{message.rstrip('.')}. {hint}"
    kind = str(reply.get("error_type") or "generation")
    status = reply.get("status")
    status = status if isinstance(status, int) and 400 <= status <= 599 else 500
    return InferenceError(status, message, CODES.get(kind, kind))
