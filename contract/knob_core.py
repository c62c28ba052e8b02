"""The machinery of knobs: a Knob (default, help, bounds), a Method (its knobs, validation,
cross-checks) and ParamError. contract/knobs.py holds the methods themselves.
Plain Python, imported by both the server and the workers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Knob:
    name: str
    type: type
    default: Any
    help: str
    group: str = "training"
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False


class ParamError(ValueError):
    """One invalid parameter: ``field`` names it, the message says what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class Method:
    backend: str
    method: str
    knobs: list[Knob] = field(default_factory=list)
    # (coerced params) -> errors: rules that span several knobs of this method
    checks: Callable[[dict[str, Any]], list[ParamError]] | None = None

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Return the full parameter set (defaults filled in) or raise the first ParamError."""
        errors = self.errors(params)
        if errors:
            raise errors[0]
        return self._coerced(params or {})

    def errors(self, params: dict[str, Any] | None) -> list[ParamError]:
        params = params or {}
        if not isinstance(params, dict):
            return [ParamError("params", "must be a JSON object of knob names to values")]
        errs: list[ParamError] = []
        for name in params:
            if self.knob(name) is None:
                known = ", ".join(k.name for k in self.knobs)
                errs.append(
                    ParamError(
                        name,
                        f"unknown parameter for {self.backend} {self.method}; known: {known}",
                    )
                )
        for knob in self.knobs:
            if knob.name in params:
                try:
                    _coerce(knob, params[knob.name])
                except ParamError as exc:
                    errs.append(exc)
        if not errs:
            errs.extend(self._cross_check(self._coerced(params)))
        return errs

    def _coerced(self, params: dict[str, Any]) -> dict[str, Any]:
        out = self.defaults()
        for name, value in params.items():
            out[name] = _coerce(self.knob(name), value)
        return out

    def _cross_check(self, p: dict[str, Any]) -> list[ParamError]:
        errs = []
        if self.method == "kto" and p.get("per_device_train_batch_size", 2) < 2:
            errs.append(
                ParamError(
                    "per_device_train_batch_size",
                    "KTO needs a batch of at least 2: its KL term pairs each prompt with "
                    "another example's completion in the same batch. Use 2 or more "
                    "(raise gradient_accumulation_steps to keep the effective batch).",
                )
            )
        if p.get("max_steps", -1) <= 0 and p.get("num_train_epochs", 1) <= 0:
            errs.append(ParamError("max_steps", "set max_steps > 0 or num_train_epochs > 0"))
        if self.checks is not None:  # the method's own rules across knobs
            errs.extend(self.checks(p))
        return errs


def _coerce(knob: Knob, value: Any) -> Any:
    name = knob.name
    if value is None:
        if knob.nullable:
            return None
        if knob.type is str and knob.default == "":  # an optional text knob left blank
            return ""
        raise ParamError(name, f"must not be empty (default {knob.default!r})")
    if knob.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
            return value.lower() in ("true", "on", "1")
        raise ParamError(name, f"must be true or false, got {value!r}")
    if knob.type in (int, float):
        if isinstance(value, bool):
            raise ParamError(name, f"must be a number, got {value!r}")
        try:
            number = knob.type(value) if not isinstance(value, str) else knob.type(value.strip())
        except OverflowError:  # int(inf), float(10**400): JSON allows both
            raise ParamError(name, "must be a finite number in range") from None
        except (TypeError, ValueError):
            kind = "a whole number" if knob.type is int else "a number"
            raise ParamError(name, f"must be {kind}, got {_shown(value)}") from None
        if knob.type is int and isinstance(value, float) and value != int(value):
            raise ParamError(name, f"must be a whole number, got {_shown(value)}")
        if number != number or number in (float("inf"), float("-inf")):
            raise ParamError(name, "must be a finite number")
        if knob.min is not None and number < knob.min:
            raise ParamError(name, f"must be at least {knob.min:g}, got {_shown(number)}")
        if knob.max is not None and number > knob.max:
            raise ParamError(name, f"must be at most {knob.max:g}, got {_shown(number)}")
        return number
    if knob.type is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ParamError(name, "must be a list of module names, e.g. q_proj,v_proj")
        _check_text(name, *value)
        return value
    if not isinstance(value, str):
        raise ParamError(name, f"must be text, got {_shown(value)}")
    _check_text(name, value)
    if knob.choices and value not in knob.choices:
        raise ParamError(name, f"must be one of {', '.join(knob.choices)}, got {_shown(value)}")
    return value


def _check_text(name: str, *values: str) -> None:
    """Text that UTF-8 cannot encode (a lone surrogate, which JSON's \\ud800 can carry) or a
    NUL would fail later, in the database, a config file or a path: refuse it here."""
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ParamError(name, "contains a lone surrogate (e.g. \\ud800), which is not "
                             "text; send valid Unicode") from None
        if "\x00" in value:
            raise ParamError(name, "contains a NUL character; give plain text")


def _shown(value: Any) -> str:
    """A value for a message: short, and never an error itself (f"{10**400:g}" raises
    OverflowError; a 5000-digit number is no help to read)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        digits = len(str(abs(value))) if abs(value) < 10**4000 else "thousands of"
        return f"a number of {digits} digits"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


