"""The errors a person or a script gets back for bad input: the field it names and the fix
(app.main turns them into 4xx answers; the pages show them beside the field)."""

from __future__ import annotations


class JobInputError(ValueError):
    """Bad input from a person or a script: ``field`` names it, ``message`` says the fix."""

    def __init__(self, field: str, message: str, status_code: int = 422,
                 extra: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status_code = status_code
        self.extra = extra  # more for the 422 body (the memory plan of a job that won't fit)


class JobStateError(JobInputError):
    def __init__(self, message: str):
        super().__init__("status", message, status_code=409)
