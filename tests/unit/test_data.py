"""The KTO dataset loader: every accepted shape comes out conversational; bad rows are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.rows import DatasetError, kto_stats, load_kto_dataset, normalize_row


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


USER = {"role": "user", "content": "What is 2 plus 2?"}
REPLY = {"role": "assistant", "content": "4."}


def test_plain_strings_become_conversational(tmp_path):
    rows = load_kto_dataset(
        write_jsonl(
            tmp_path / "d.jsonl", [{"prompt": "Hi?", "completion": " Hello.", "label": True}]
        )
    )
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "completion": [{"role": "assistant", "content": " Hello."}],
            "label": True,
        }
    ]


def test_conversational_and_plain_rows_mix_in_one_file(tmp_path):
    system = {"role": "system", "content": "Be kind.", "name": "dropped"}
    raw = [
        {"prompt": [system, USER], "completion": [REPLY], "label": False, "extra": 1},
        {"prompt": "Plain?", "completion": "Yes.", "label": 1},
    ]
    rows = load_kto_dataset(write_jsonl(tmp_path / "d.jsonl", raw))
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be kind."}, USER]
    assert rows[0]["completion"] == [REPLY]
    assert set(rows[0]) == {"prompt", "completion", "label"}
    assert rows[1]["prompt"] == [{"role": "user", "content": "Plain?"}]
    assert rows[1]["label"] is True
    # One shape for every row: the trainer sees a uniform conversational dataset.
    assert all(isinstance(r["prompt"], list) and isinstance(r["completion"], list) for r in rows)


def test_json_list_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": "b", "label": False}]))
    assert load_kto_dataset(path)[0]["label"] is False


def test_paired_rows_are_unpaired(tmp_path):
    raw = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
        {"chosen": [USER, REPLY], "rejected": [USER, {"role": "assistant", "content": "5."}]},
    ]
    rows = load_kto_dataset(write_jsonl(tmp_path / "p.jsonl", raw))
    assert [r["label"] for r in rows] == [True, False, True, False]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "Paris."}]
    assert rows[1]["completion"] == [{"role": "assistant", "content": "Rome."}]
    assert rows[2]["prompt"] == [USER]  # the implicit prompt: what both conversations share
    assert rows[3]["completion"] == [{"role": "assistant", "content": "5."}]


def test_row_numbers_count_lines_including_blank_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b", "label": True})
    path.write_text(f"{good}\n\n{good}\n{json.dumps({'prompt': 'a', 'completion': 'b'})}\n")
    with pytest.raises(DatasetError) as info:
        load_kto_dataset(path)
    assert info.value.row == 4
    assert "row 4" in str(info.value) and "label" in str(info.value)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"prompt": "a", "completion": "b", "label": "yes"}, "label must be true"),
        ({"prompt": "", "completion": "b", "label": True}, "prompt is empty"),
        ({"prompt": [], "completion": "b", "label": True}, "non-empty list"),
        ({"prompt": [{"role": "bot", "content": "x"}], "completion": "b", "label": True}, "role"),
        ({"prompt": [{"role": "user", "content": 3}], "completion": "b", "label": True}, "text"),
        ({"prompt": [USER, REPLY], "completion": "b", "label": True}, "ends with an assistant"),
        ({"prompt": "a", "completion": [USER], "label": True}, "one assistant message"),
        ({"prompt": "a", "completion": [REPLY, REPLY], "label": True}, "one assistant message"),
        ({"prompt": "a", "chosen": "b"}, "rejected"),
        ({"chosen": "b", "rejected": "c"}, "needs a prompt"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_rows_are_named(row, words):
    with pytest.raises(DatasetError) as info:
        normalize_row(row, 7)
    assert info.value.row == 7
    assert words in str(info.value)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b", "label": true}\n{"prompt": oops}\n')
    with pytest.raises(DatasetError, match="row 2: not valid JSON"):
        load_kto_dataset(path)


def test_missing_empty_and_broken_files(tmp_path):
    with pytest.raises(DatasetError, match="no dataset file"):
        load_kto_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_kto_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "broken.json").write_text('[{"prompt": "a",')
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_kto_dataset(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match="folder"):
        load_kto_dataset(tmp_path)


def test_kto_stats():
    rows = [{"label": True}] * 3 + [{"label": False}] * 6
    stats = kto_stats(rows)
    assert stats["rows"] == 9 and stats["desirable"] == 3 and stats["undesirable"] == 6
    assert stats["desirable_weight_range"] == (2.0, 2.667)
    assert kto_stats([{"label": True}])["desirable_weight_range"] is None


def test_demo_dataset_loads(tmp_path):
    from workers.tools.demo_assets import build_dataset

    rows = load_kto_dataset(build_dataset(tmp_path / "demo.jsonl"))
    stats = kto_stats(rows)
    assert stats["rows"] == len(rows) > 0
    assert stats["desirable"] > 0 and stats["undesirable"] > 0


def test_a_line_separator_inside_a_string_does_not_split_the_row(tmp_path):
    path = tmp_path / "ls.jsonl"
    path.write_text(json.dumps({"prompt": "a\u2028b", "completion": "c", "label": True},
                               ensure_ascii=False) + "\r\n"
                    + json.dumps({"prompt": "d", "completion": "e", "label": False}) + "\n",
                    encoding="utf-8")
    rows = load_kto_dataset(path)
    assert len(rows) == 2 and rows[0]["prompt"][0]["content"] == "a\u2028b"
