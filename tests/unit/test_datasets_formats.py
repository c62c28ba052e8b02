"""Every dataset shape detected and normalised, every kind of bad row named by its row number,
and the KTO weights inside the paper's range (app/datasets/formats.py, app/datasets/readers.py)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.datasets.formats import MAX_SHOWN, analyze, kto_balance
from contract.rows import load_kto_dataset
from contract.sft_rows import load_sft_rows

U = [{"role": "user", "content": "Hi?"}]
A = [{"role": "assistant", "content": "Hello."}]
B = [{"role": "assistant", "content": "Go away."}]

SHAPES = [
    # (rows, kind, format, rows after conversion, desirable)
    ([{"prompt": "q1", "completion": "a1", "label": True},
      {"prompt": "q2", "completion": "a2", "label": False}], "kto", "kto", 2, 1),
    ([{"prompt": U, "completion": A, "label": True},
      {"prompt": U, "completion": B, "label": False}], "kto", "kto-conversational", 2, 1),
    ([{"messages": U + A, "label": True}, {"messages": U + B, "label": False}],
     "kto", "kto-conversational", 2, 1),
    ([{"prompt": "q", "chosen": "good", "rejected": "bad"},
      {"prompt": "q2", "chosen": "good2", "rejected": "bad2"}], "kto", "paired", 4, 2),
    ([{"chosen": U + A, "rejected": U + B}], "kto", "paired", 2, 1),
    ([{"text": "User: hi\nAssistant: hello"}, {"text": "more"}], "sft", "sft-text", 2, None),
    ([{"prompt": "q", "completion": "a"}], "sft", "sft-prompt-completion", 1, None),
    ([{"messages": U + A}], "sft", "sft-messages", 1, None),
]


def write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(columns)
        for r in rows:
            w.writerow([json.dumps(r[c]) if isinstance(r.get(c), list)
                        else str(r.get(c, "")).lower() if isinstance(r.get(c), bool)
                        else r.get(c, "") for c in columns])
        path.write_text(out.getvalue(), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(path: Path):
    out = io.StringIO()
    analysis = analyze([path], out)
    return analysis, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("rows, kind, fmt, n, desirable", SHAPES)
def test_every_shape_is_detected_and_normalised(tmp_path, suffix, rows, kind, fmt, n,
                                                desirable):
    path = write(tmp_path / f"d{suffix}", rows)
    analysis, out = run(path)
    assert analysis.problems == [], analysis.problems
    assert (analysis.kind, analysis.format, analysis.rows) == (kind, fmt, n)
    assert len(out) == n
    canonical = tmp_path / "canonical.jsonl"
    canonical.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    if kind == "kto":
        # The workers read the normalised file as they read any KTO file.
        assert all(set(r) == {"prompt", "completion", "label"} for r in out)
        loaded = load_kto_dataset(canonical)
        assert sum(r["label"] for r in loaded) == desirable == analysis.desirable
        assert analysis.undesirable == n - desirable
        assert loaded[0]["completion"][0]["role"] == "assistant"
    else:
        sft_rows, info = load_sft_rows(canonical)
        assert len(sft_rows) == n and info["format"] in ("text", "messages")


def test_a_pair_becomes_one_desirable_and_one_undesirable_row(tmp_path):
    _, out = run(write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "yes", "rejected": "no"}]))
    assert out == [
        {"prompt": [{"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": "yes"}], "label": True},
        {"prompt": [{"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": "no"}], "label": False}]


GOOD = json.dumps({"prompt": "q", "completion": "a", "label": True})
BAD_ROWS = [
    (b'{"prompt": "q", "completion": "a", "label": tru}', "not valid JSON"),
    (b'{"prompt": "q", "label": false}', "missing completion"),
    (b'{"prompt": "", "completion": "a", "label": false}', "prompt is empty"),
    (b'{"prompt": "q", "completion": "", "label": false}', "completion is empty"),
    (b'{"prompt": "q", "completion": "a", "label": "no"}', "label must be true"),
    (b'{"prompt": "q", "completion": "a", "label": 0.5}', "label must be true"),
    (b'{"prompt": [{"role": "bot", "content": "x"}], "completion": "a", "label": false}',
     "has role 'bot'"),
    (b'{"prompt": "q", "completion": [{"role": "user", "content": "x"}], "label": false}',
     "one assistant message"),
    (b'{"prompt": "caf\xe9", "completion": "a", "label": false}', "not UTF-8"),
    (b'{"prompt": "\\ud800", "completion": "a", "label": false}', "not valid Unicode"),
    (b'[1, 2]', "expected an object"),
    (b'{"question": "q", "answer": "a"}', "no known fields"),
    (b'{"text": "an SFT row"}', "no label"),
    (b'{"prompt": "q", "chosen": "a"}', "missing rejected"),
]


@pytest.mark.parametrize("line, words", BAD_ROWS)
def test_each_kind_of_bad_row_is_named_by_its_row(tmp_path, line, words):
    good = GOOD.encode() + b"\n" + GOOD.replace("true", "false").encode() + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + good + line + b"\n" + good)
    analysis, _ = run(path)
    assert analysis.problem_count == 1, analysis.problems
    assert analysis.problems[0]["row"] == 5
    assert words in analysis.problems[0]["message"]


def test_csv_problems_name_the_data_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,label\nq,a,true\nq,a,maybe\nq,,false\nq,a,true,extra\n")
    analysis, _ = run(path)
    assert [(p["row"], p["message"][:24]) for p in analysis.problems] == [
        (2, "label must be true (desi"), (3, "completion is empty"),
        (4, "4 cells but the header n")]


@pytest.mark.parametrize("data, words", [
    (b"", "holds no rows"),
    (b"\n\n", "holds no rows"),
    (b"[1, 2", "not valid JSON"),
    ((GOOD + "\n") .encode() * 3, "KTO needs both labels"),
    (b'{"text": "a"}\n{"messages": [{"role": "assistant", "content": "b"}]}\n', "one shape"),
    (b'{"text": "a"}\n{"prompt": "q", "completion": "a", "label": true}\n', "SFT dataset"),
])
def test_whole_file_problems(tmp_path, data, words):
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    analysis, _ = run(path)
    assert analysis.problem_count and words in " ".join(p["message"] for p in analysis.problems)


def test_many_problems_show_the_first_and_count_them_all(tmp_path):
    path = tmp_path / "d.jsonl"
    bad = '{"prompt": "q", "completion": "a", "label": "x"}\n'
    path.write_text((GOOD + "\n") + bad * 120, encoding="utf-8")
    analysis, _ = run(path)
    assert analysis.problem_count == 120 and len(analysis.problems) == MAX_SHOWN
    assert analysis.problems[0]["row"] == 2 and analysis.problems[-1]["row"] == MAX_SHOWN + 1


def test_a_broken_parquet_file_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    analysis, _ = run(path)
    assert analysis.problem_count == 1 and "not a readable Parquet file" in \
        analysis.problems[0]["message"]


def test_parquet_bytes_that_are_not_utf8_are_named_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": [b"ok", b"\xff\xfe", b"ok"], "completion": ["a"] * 3,
                             "label": [True, False, False]}), path)
    analysis, _ = run(path)
    assert [(p["row"], p["message"]) for p in analysis.problems] == [
        (2, "column 'prompt' is not UTF-8 text")]


@pytest.mark.parametrize("nd, nu, dw, uw", [
    (100, 100, 1.0, 1.0), (120, 100, 1.0, 1.0), (133, 100, 1.0, 1.0),
    (50, 100, 2.0, 1.0), (1, 3, 3.0, 1.0), (300, 100, 1.0, 2.25), (7, 3, 1.0, 1.75),
])
def test_kto_weights_for_known_balances(nd, nu, dw, uw):
    got = kto_balance(nd, nu)
    assert (got["desirable_weight"], got["undesirable_weight"]) == (dw, uw)
    assert 1 <= got["weighted_ratio"] <= 4 / 3


@settings(max_examples=300, deadline=None, derandomize=True)
@given(nd=st.integers(1, 10**7), nu=st.integers(1, 10**7))
def test_kto_weights_always_land_in_the_papers_range(nd, nu):
    got = kto_balance(nd, nu)
    ratio = got["desirable_weight"] * nd / (got["undesirable_weight"] * nu)
    assert 1 - 1e-9 <= ratio <= 4 / 3 + 1e-9
    assert min(got["desirable_weight"], got["undesirable_weight"]) == 1.0
