"""The Models page's own-folder actions as htmx sends them (app/web/pages/model_folders.py):
Add a local folder answers with its form and the error beside the field, or HX-Redirect to
/models; Remove and Convert for MLX answer with the row's error, or HX-Redirect. The
fragments render for a registered and a cached model. TestClient, no lifespan."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.web.templating import templates
from tests.api.test_model_folders import model_folder, models
from tests.helpers.pages import HX


def field_error(html: str, field: str) -> str | None:
    found = re.search(rf'<p class="field-error" id="err-{field}" role="alert">(.*?)</p>', html,
                      re.S)
    return found.group(1) if found else None


def test_add_a_folder_redirects_to_models(client, tmp_path):
    folder = model_folder(tmp_path)
    resp = client.post("/models/folders", data={"path": str(folder), "name": "mine"},
                       headers=HX)
    assert resp.status_code == 200 and resp.headers["HX-Redirect"] == "/models"
    assert models(client)["mine"]["source"] == "local"


def test_add_a_folder_shows_the_error_beside_the_field(client, tmp_path):
    folder = model_folder(tmp_path, weights=False)
    resp = client.post("/models/folders", data={"path": str(folder), "name": ""}, headers=HX)
    assert resp.status_code == 200 and "HX-Redirect" not in resp.headers
    html = resp.text
    assert 'id="model-folder-add"' in html and "weights (*.safetensors" in field_error(html,
                                                                                      "path")
    assert f'value="{folder}"' in html and 'aria-invalid="true"' in html
    model_folder(tmp_path, "ok")
    resp = client.post("/models/folders", data={"path": str(tmp_path / "ok"), "name": "a b"},
                       headers=HX)
    assert "letters, digits" in field_error(resp.text, "name")
    assert field_error(resp.text, "path") is None
    plain = client.post("/models/folders", data={"path": "relative"})  # no htmx: the status
    assert plain.status_code == 422 and "relative path" in field_error(plain.text, "path")


def test_a_form_without_the_csrf_token_is_refused(app, tmp_path):
    bare = TestClient(app, base_url="http://127.0.0.1")
    folder = model_folder(tmp_path)
    assert bare.post("/models/folders", data={"path": str(folder)}).status_code == 403
    assert "my-model" not in models(bare)


def test_remove_and_its_refusal(client, tmp_path):
    folder = model_folder(tmp_path)
    client.post("/api/models", json={"path": str(folder), "name": "my.model"})
    resp = client.delete("/models/my.model", headers=HX)
    assert resp.headers["HX-Redirect"] == "/models" and "my.model" not in models(client)
    resp = client.delete("/models/my.model", headers=HX)
    assert resp.status_code == 200
    assert 'id="model-error-my-model"' in resp.text
    assert "Remove failed: no registered model &#39;my.model&#39;" in resp.text


def test_convert_redirects_to_the_job_or_says_why_not(client, tmp_path):
    client.post("/api/models", json={"path": str(model_folder(tmp_path)), "name": "mine"})
    resp = client.post("/models/mine/convert", data={"q_bits": "8", "q_group_size": "128"},
                       headers=HX)
    job_url = resp.headers["HX-Redirect"]
    job = client.get("/api" + job_url).json()
    assert (job["method"], job["params"]["q_bits"], job["params"]["q_group_size"]) == \
        ("convert", 8, 128)
    resp = client.post("/models/mine/convert", data={"q_bits": "3"}, headers=HX)
    assert resp.status_code == 200 and "HX-Redirect" not in resp.headers
    assert 'id="model-error-mine"' in resp.text and "Convert failed: q_bits: must be 4 or 8" \
        in resp.text


def render(name: str, **context) -> str:
    return templates.get_template(name).render(csrf_token="tok", **context)


def test_the_fragments_render_for_each_kind_of_model():
    html = render("_model_actions.html", m={"id": "mine", "source": "local"},
                  kind="registered")
    assert 'hx-post="/models/mine/convert"' in html and 'hx-delete="/models/mine"' in html
    assert 'hx-confirm="Remove mine from Prospect? Its files stay' in html
    demo = render("_model_actions.html", m={"id": "tiny-demo", "source": "demo"},
                  kind="registered")
    assert "prospect init adds the demo back" in demo
    quantized = render("_model_actions.html", kind="registered",
                       m={"id": "q", "source": "converted", "quantization": {"bits": 4}})
    assert "/convert" not in quantized and 'hx-delete="/models/q"' in quantized
    cached = render("_model_actions.html", m={"id": "Qwen/Qwen2-0.5B", "label": None},
                    kind="cached")
    assert 'hx-post="/models/Qwen/Qwen2-0.5B/convert"' in cached and "hx-delete" not in cached
    assert 'id="model-error-Qwen--Qwen2-0-5B"' in cached
    mlx_cached = render("_model_actions.html", m={"id": "mlx-community/x-4bit",
                                                  "label": "MLX 4-bit"}, kind="cached")
    assert "/convert" not in mlx_cached
    form = render("_model_folder_form.html")
    assert 'hx-post="/models/folders"' in form and "field-error" not in form
