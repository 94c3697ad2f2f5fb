"""Tests for feedback validation and the readers (JSONL, HH-RLHF pairs, CSV ratings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_lens.tasks.feedback import FeedbackError, read_feedback, split_hh_pair, validate_record

GOOD = [
    {"kind": "rating", "prompt": "The room was", "completion": " clean.", "rating": 4, "labeler": "a"},
    {"kind": "comparison", "prompt": "The room was", "chosen": " clean.", "rejected": " dirty.", "labeler": "b"},
    {"kind": "ranking", "prompt": "The room was", "completions": [" ok.", " clean.", " dirty."], "order": [1, 0, 2]},
    {"kind": "critique", "prompt": "The room was", "completion": " dirty.", "critique": "It says 'dirty'.", "verdict": "bad"},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_all_kinds_and_skips_blank_lines(tmp_path):
    lines = [json.dumps(GOOD[0]), "", "   ", *(json.dumps(r) for r in GOOD[1:])]
    records = read_feedback(write_jsonl(tmp_path / "fb.jsonl", lines))
    assert [r["kind"] for r in records] == ["rating", "comparison", "ranking", "critique"]
    assert records[0] == GOOD[0]
    assert records[2]["labeler"] is None  # normalised: always present


def test_empty_completion_is_a_valid_thing_to_rate():
    rec = validate_record({"kind": "rating", "prompt": "p", "completion": "", "rating": 1})
    assert rec["completion"] == "" and rec["rating"] == 1


def test_integral_float_rating_is_normalised():
    assert validate_record({**GOOD[0], "rating": 5.0})["rating"] == 5


BAD = [
    ({**GOOD[0], "rating": 7}, "rating", "expected an integer 1..5, got 7"),
    ('{"kind": "rating", "prompt": "p", "completion": "c", "rating": NaN}', "rating", "got nan"),
    ({**GOOD[0], "rating": "x"}, "rating", "got 'x'"),
    ({**GOOD[0], "rating": 2.5}, "rating", "got 2.5"),
    ({**GOOD[0], "rating": True}, "rating", "expected an integer"),
    ({k: v for k, v in GOOD[0].items() if k != "completion"}, "completion", "missing"),
    ({**GOOD[0], "kind": "vote"}, "kind", "expected one of rating, comparison, ranking, critique"),
    ({"prompt": "p", "completion": "c", "rating": 3}, "kind", "missing"),
    ({**GOOD[2], "order": [0, 0, 2]}, "order", "permutation"),
    ({**GOOD[2], "order": [0, 1]}, "order", "permutation"),
    ({**GOOD[1], "rejected": " clean."}, "chosen", "identical chosen and rejected carry no preference"),
    ({**GOOD[3], "verdict": "meh"}, "verdict", "'good' or 'bad'"),
    ({**GOOD[1], "prompt": 3}, "prompt", "expected a string"),
    ({**GOOD[2], "completions": [" a."]}, "completions", "at least 2"),
]


@pytest.mark.parametrize(("record", "field", "problem"), BAD, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD)])
def test_rejects_bad_records_naming_file_line_and_field(tmp_path, record, field, problem):
    line = record if isinstance(record, str) else json.dumps(record)
    path = write_jsonl(tmp_path / "fb.jsonl", [json.dumps(GOOD[0]), "", line])
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 3, field)
    message = str(err)
    assert message.startswith(f"{path}:3: field '{field}': ")
    assert problem in message
    assert message.endswith("Fix the record or drop it.")
    assert isinstance(err, ValueError)


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "fb.jsonl", [json.dumps(GOOD[0]), '{"kind": "rating", "prompt": '])
    with pytest.raises(FeedbackError, match=r"fb\.jsonl:2: invalid JSON") as info:
        read_feedback(path)
    assert info.value.line == 2 and info.value.field is None


def test_validate_record_message_format():
    with pytest.raises(FeedbackError) as info:
        validate_record({**GOOD[0], "rating": 7}, source="x.jsonl", line=5)
    assert str(info.value) == "x.jsonl:5: field 'rating': expected an integer 1..5, got 7. Fix the record or drop it."


HH_CHOSEN = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?\n\nAssistant: Knead it and bake it."
HH_REJECTED = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water.\n\nHuman: Then?\n\nAssistant: I don't know."


def test_hh_rlhf_pairs_become_comparisons(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [json.dumps({"chosen": HH_CHOSEN, "rejected": HH_REJECTED})])
    [rec] = read_feedback(path)
    assert rec["kind"] == "comparison" and rec["labeler"] == "hh-rlhf"
    assert rec["prompt"].endswith("\n\nHuman: Then?\n\nAssistant:")
    assert rec["chosen"] == " Knead it and bake it."
    assert rec["rejected"] == " I don't know."
    assert rec["prompt"] + rec["chosen"] == HH_CHOSEN and rec["prompt"] + rec["rejected"] == HH_REJECTED


def test_hh_split_without_assistant_marker_cuts_at_whitespace():
    prompt, chosen, rejected = split_hh_pair("The food was great.", "The food was bad.")
    assert (prompt, chosen, rejected) == ("The food was", " great.", " bad.")
    assert split_hh_pair("yes", "no") == ("", "yes", "no")


def test_hh_identical_pair_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [json.dumps({"chosen": HH_CHOSEN, "rejected": HH_CHOSEN})])
    with pytest.raises(FeedbackError, match=r"hh\.jsonl:1: field 'chosen': identical"):
        read_feedback(path)


def test_preference_pairs_with_prompt_are_comparisons(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"})])
    assert read_feedback(path) == [{"kind": "comparison", "prompt": "p", "chosen": " a", "rejected": " b", "labeler": None}]


def test_csv_ratings(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(
        'prompt,completion,rating,labeler\n"The room was"," clean, big.",5,ann\n\n"The bed was"," a\nbit hard.",2,\n',
        encoding="utf-8",
    )
    records = read_feedback(path)
    assert records == [
        {"kind": "rating", "prompt": "The room was", "completion": " clean, big.", "rating": 5, "labeler": "ann"},
        {"kind": "rating", "prompt": "The bed was", "completion": " a\nbit hard.", "rating": 2, "labeler": None},
    ]


def test_csv_errors_name_line_and_field(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text('prompt,completion,rating\n"a"," b\nc",3\n"d","e",x\n', encoding="utf-8")
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert (info.value.line, info.value.field) == (4, "rating")
    assert "ratings.csv:4: field 'rating'" in str(info.value)
    path.write_text("prompt,rating\na,3\n", encoding="utf-8")
    with pytest.raises(FeedbackError, match=r"ratings\.csv:1: field 'completion': missing column"):
        read_feedback(path)
    path.write_text("prompt,completion,rating\na,b,7\n", encoding="utf-8")
    with pytest.raises(FeedbackError, match="got 7"):
        read_feedback(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_feedback(tmp_path / "nope.jsonl")
