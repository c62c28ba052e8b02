"""The pages' forms read back and posted as the browser would: the controls a page holds, the
field block around one, the untouched new-job form, and a job added straight to the database."""

from __future__ import annotations

from html.parser import HTMLParser

from sqlmodel import Session

from app.models import Job
from contract.knobs import TORCH_KTO

HX = {"HX-Request": "true"}


class Inputs(HTMLParser):
    """Collects form controls: name -> attributes (selects get their selected option)."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag in ("input", "select") and "name" in a:
            self.controls[a["name"]] = {"tag": tag, **a}
            self._select = a["name"] if tag == "select" else None
        elif tag == "option" and self._select and "selected" in a:
            self.controls[self._select]["value"] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def controls(html: str) -> dict[str, dict]:
    parser = Inputs()
    parser.feed(html)
    return parser.controls


def field_block(html: str, field_id: str) -> str:
    """The `<div class="field">` that holds the control with this id."""
    start = html.rindex('<div class="field', 0, html.index(f'id="{field_id}"'))
    end = html.find('<div class="field', start + 10)
    return html[start:end if end > 0 else len(html)]


def form_data(**params) -> dict:
    """What the browser posts for the untouched form, with some knobs changed."""
    data = {"name": "", "method": "torch/kto", "model_choice": "tiny-demo", "model_text": "",
            "dataset_choice": "demo-kto", "dataset_text": ""}
    for knob in TORCH_KTO.knobs:
        value = params.get(knob.name, knob.default)
        if knob.type is bool:  # the hidden "false" marker, then the box's "true" if checked
            data[f"params.{knob.name}"] = ["false", "true"] if value else ["false"]
        else:
            data[f"params.{knob.name}"] = ", ".join(value) if isinstance(value, list) \
                else str(value)
    return data


def add_job(app, **fields) -> Job:
    base = {"name": "run", "backend": "torch", "method": "kto", "model": "tiny-demo",
            "dataset": "demo-kto", "params": TORCH_KTO.defaults()}
    with Session(app.state.engine) as s:
        job = Job(**{**base, **fields})
        s.add(job)
        s.commit()
        s.refresh(job)
        return job
