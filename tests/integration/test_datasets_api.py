"""/api/datasets through the real server: add (upload, path, hub cache), inspect, export,
delete; jobs pick registered datasets up, and a KTO job on SFT data is a clear 422."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.helpers.data import csv_bytes, jsonl, parquet
from tests.helpers.server import make_server, raw_get, upload

PAIRED = [{"prompt": f"What is {i} + {i}?", "chosen": f"It is {2 * i}.",
           "rejected": "No idea, figure it out."} for i in range(12)]
UNPAIRED = [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 4 != 0} for i in range(40)]


def test_an_uploaded_parquet_file_is_registered_with_stats_preview_tokens_and_mlx(live_server):
    status, entry = upload(live_server, "api-unpaired", parquet(UNPAIRED), "u.parquet")
    assert status == 201, entry
    assert (entry["kind"], entry["format"], entry["rows"], entry["source"]) == \
        ("kto", "kto", 40, "upload")
    folder = live_server.home / "datasets" / "api-unpaired"
    assert (folder / "original.parquet").is_file() and Path(entry["path"]) == \
        folder / "api-unpaired.jsonl"
    got = live_server.get("/api/datasets/api-unpaired")
    stats = got["stats"]
    assert (stats["desirable"], stats["undesirable"]) == (30, 10)
    # 30:10 is past 4/3: λU rises to ¾·30/10 so that λD·nD / λU·nU = 4/3.
    assert (stats["desirable_weight"], stats["undesirable_weight"]) == (1.0, 2.25)
    assert 1 <= stats["weighted_ratio"] <= 4 / 3

    rows = live_server.get("/api/datasets/api-unpaired/preview?limit=3")
    assert [r["row"] for r in rows] == [1, 2, 3] and rows[0]["label"] is False
    assert rows[1]["completion"] == [{"role": "assistant", "content": "a1"}]

    tokens = live_server.get("/api/datasets/api-unpaired/tokens?model=tiny-demo&max_length=12")
    assert tokens["rows"] == 40 and tokens["total"]["max"] >= tokens["total"]["p50"] > 0
    assert tokens["prompt"]["p50"] < tokens["total"]["p50"]
    longer = live_server.get("/api/datasets/api-unpaired/tokens?model=tiny-demo&max_length=8")
    assert longer["truncated"] + longer["dropped"] >= tokens["truncated"] + tokens["dropped"]
    assert longer["total"] == tokens["total"]
    # Every row's lengths are kept once per tokenizer; other max lengths are sums over them.
    assert len(list(folder.glob("tokens-*.json"))) == 1

    status, body = raw_get(live_server, "/api/datasets/api-unpaired/mlx?seed=3")
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        train = z.read("api-unpaired/train.jsonl").decode().splitlines()
        valid = z.read("api-unpaired/valid.jsonl").decode().splitlines()
    assert (len(train), len(valid)) == (27, 3)  # the 30 desirable rows, 90/10
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in train)
    again = raw_get(live_server, "/api/datasets/api-unpaired/mlx?seed=3&file=valid")[1]
    assert again.decode().splitlines() == valid  # reproducible
    text = raw_get(live_server, "/api/datasets/api-unpaired/mlx?seed=3&style=text&file=train")
    assert json.loads(text[1].decode().splitlines()[0])["text"].startswith("User: q")

    status, _ = live_server.request("DELETE", "/api/datasets/api-unpaired")
    assert status == 204 and not folder.exists()
    assert live_server.request("GET", "/api/datasets/api-unpaired")[0] == 404


def test_a_rejected_upload_lists_its_rows_and_registers_nothing(live_server):
    body = jsonl(UNPAIRED[:5]) + b'{"prompt": "x", "completion": "y", "label": "yes"}\n' \
        + b"not json\n" + jsonl(UNPAIRED[5:8])
    status, resp = upload(live_server, "api-broken", body, "b.jsonl")
    assert status == 422
    detail = resp["detail"][0]
    assert detail["problem_count"] == 2 and "row 6" in detail["msg"]
    assert [p["row"] for p in detail["problems"]] == [6, 7]
    assert not (live_server.home / "datasets" / "api-broken").exists()
    assert live_server.request("GET", "/api/datasets/api-broken")[0] == 404


def test_register_by_path_reads_the_file_where_it_is(live_server):
    path = live_server.home / "my-prefs.csv"
    path.write_bytes(csv_bytes(PAIRED))
    status, entry = live_server.post("/api/datasets/register", {"path": str(path)})
    assert status == 201, entry
    assert (entry["id"], entry["format"], entry["rows"]) == ("my-prefs", "paired", 24)
    assert entry["original_path"] == str(path)
    for body, words in [({"path": "/etc/passwd"}, "outside the folders"),
                        ({"path": str(live_server.home / "nope.csv")}, "is not a file"),
                        ({"path": str(path), "hub_id": "a/b"}, "either path"),
                        ({"path": str(live_server.home / "prospect.db")}, ".parquet file")]:
        status, resp = live_server.post("/api/datasets/register", body)
        assert status == 422 and words in resp["detail"][0]["msg"], resp


def test_jobs_take_registered_ids_and_refuse_kto_on_sft_data(live_server):
    status, _ = upload(live_server, "api-sft", jsonl([{"text": f"t{i}"} for i in range(5)]),
                       "s.jsonl")
    assert status == 201
    status, resp = live_server.post("/api/jobs", {"model": "tiny-demo", "dataset": "api-sft",
                                                  "params": {"max_steps": 1}})
    assert status == 422 and "SFT data" in resp["detail"][0]["msg"], resp
    assert resp["detail"][0]["field"] == "dataset"


def test_the_job_form_gets_the_datasets_weights(live_server):
    status, _ = upload(live_server, "api-few-good", jsonl(
        [{"prompt": f"q{i}", "completion": "a", "label": i < 10} for i in range(40)]), "f.jsonl")
    assert status == 201
    status, html = raw_get(live_server, "/fragments/dataset-weights?dataset_choice=api-few-good"
                           "&method=torch/kto")
    html = html.decode()
    assert status == 200 and "10 desirable / 30 undesirable" in html
    assert 'id="f-desirable_weight" name="params.desirable_weight" value="3.0"' in html
    assert 'id="f-undesirable_weight" name="params.undesirable_weight" value="1.0"' in html
    sft = raw_get(live_server, "/fragments/dataset-weights?dataset_choice=api-few-good"
                  "&method=mlx/sft")[1].decode()
    assert "f-desirable_weight" not in sft  # no such knob in an SFT job


def fake_hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: blobs, snapshots/<commit>/… links, refs/main."""
    base = root / f"datasets--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for i, (rel, data) in enumerate(files.items()):
        blob = base / "blobs" / f"blob{i}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return base


def test_a_hub_dataset_comes_from_the_local_cache_only(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    cache = tmp_path / "hf" / "hub"
    fake_hub_cache(cache, "trl-lib/kto-mix-14k", {
        "data/train-00000-of-00002.parquet": parquet(UNPAIRED[:20]),
        "data/train-00001-of-00002.parquet": parquet(UNPAIRED[20:]),
        "data/test-00000-of-00001.parquet": parquet(UNPAIRED[:8]),
        "README.md": b"# card"})
    server = make_server(home, HF_HOME=str(tmp_path / "hf"))
    server.start()
    try:
        html = raw_get(server, "/datasets")[1].decode()
        assert '<option value="trl-lib/kto-mix-14k">' in html  # suggested in the form
        status, entry = server.post("/api/datasets/register", {"hub_id": "trl-lib/kto-mix-14k"})
        assert status == 201, entry
        assert (entry["id"], entry["source"], entry["rows"]) == ("kto-mix-14k", "hub", 40)
        status, entry = server.post("/api/datasets/register", {
            "hub_id": "trl-lib/kto-mix-14k", "split": "test", "name": "kto-test"})
        assert status == 201 and entry["rows"] == 8
        status, resp = server.post("/api/datasets/register", {
            "hub_id": "trl-lib/kto-mix-14k", "split": "validation", "name": "v"})
        assert status == 404 and "no 'validation' split" in resp["detail"][0]["msg"]
        status, resp = server.post("/api/datasets/register", {"hub_id": "someone/not-here"})
        msg = resp["detail"][0]["msg"]
        assert status == 404 and "not in the Hugging Face cache" in msg
        assert "hf download someone/not-here --repo-type dataset" in msg
    finally:
        server.stop()


@pytest.mark.slow
def test_a_kto_job_trains_on_an_uploaded_paired_file(live_server):
    """A paired set uploaded as CSV and as Parquet is registered as the same rows, so one
    training job covers both (a torch worker takes ~10 s to start on a 2-core machine)."""
    paths = []
    for filename, body in (("prefs.csv", csv_bytes(PAIRED)), ("prefs.parquet", parquet(PAIRED))):
        status, entry = upload(live_server, "train-" + filename.replace(".", "-"), body,
                               filename)
        assert status == 201 and entry["format"] == "paired" and entry["rows"] == 24, entry
        paths.append(Path(entry["path"]))
    assert paths[0].read_bytes() == paths[1].read_bytes()  # what a worker reads: the same
    status, job = live_server.post("/api/jobs", {
        "name": "train-prefs-csv", "model": "tiny-demo", "dataset": "train-prefs-csv",
        "params": {"max_steps": 2, "per_device_train_batch_size": 4,
                   "gradient_accumulation_steps": 1, "logging_steps": 1, "max_length": 64,
                   "learning_rate": 1e-4}})
    assert status == 201, job
    assert job["dataset_path"] == str(paths[0])
    done = live_server.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert Path(done["adapter_path"]).is_dir()


def multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----prospect-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def page_post(server, path: str, body: bytes, ctype: str):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, resp.getheader("location"), data


def csrf_token(server) -> str:
    html = raw_get(server, "/datasets")[1].decode()
    return html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_the_pages_upload_form_checks_csrf_size_and_rows(demo_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(demo_home, home)
    server = make_server(home, PROSPECT_UPLOAD_LIMIT_MB="1")
    server.start()
    try:
        token = csrf_token(server)
        body, ctype = multipart({"csrf_token": token, "name": ""}, "Page Prefs.csv",
                                csv_bytes(PAIRED))
        status, location, _ = page_post(server, "/datasets/upload", body, ctype)
        assert (status, location) == (303, "/datasets/Page-Prefs")  # named from the file
        assert server.get("/api/datasets/Page-Prefs")["rows"] == 24

        body, ctype = multipart({"csrf_token": "stale", "name": "x"}, "x.csv", csv_bytes(PAIRED))
        status, _, html = page_post(server, "/datasets/upload", body, ctype)
        assert status == 403 and "Form refused" in html

        bad = jsonl(UNPAIRED[:3]) + b'{"prompt": "q", "completion": "a", "label": 2}\n'
        body, ctype = multipart({"csrf_token": token, "name": "bad"}, "bad.jsonl", bad)
        status, _, html = page_post(server, "/datasets/upload", body, ctype)
        assert status == 422 and "row 4" in html and "label must be true" in html

        big = jsonl(UNPAIRED) * (2 * 2**20 // len(jsonl(UNPAIRED)) + 1)
        body, ctype = multipart({"csrf_token": token, "name": "big"}, "big.jsonl", big)
        status, _, html = page_post(server, "/datasets/upload", body, ctype)
        assert status == 413 and "limit is 1 MB" in html
        left = sorted(p.name for p in (home / "datasets").iterdir())
        assert left == ["Page-Prefs", "demo-kto.jsonl"], left
    finally:
        server.stop()
