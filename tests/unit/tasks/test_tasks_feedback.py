"""Tests for feedback validation and the readers (JSONL, HH-RLHF pairs, CSV ratings)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from rlhf_lens.tasks.feedback import MAX_CSV_CELL, FeedbackError, read_feedback, read_feedback_file, split_hh_pair, validate_record

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


# --- files as users hand them over: every problem is one line naming file, line (and field) and the fix ----------


def one_line(err: Exception) -> str:
    message = str(err)
    assert "\n" not in message and "\r" not in message
    return message


def test_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FeedbackError) as info:
        read_feedback(tmp_path)
    assert one_line(info.value) == f"{tmp_path}: is a directory, not a feedback file. Give the path of a .jsonl or .csv file."


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("fb.jsonl", "", "holds no feedback records (it is empty or blank). Point to a file with one JSON record per line."),
        ("fb.jsonl", "\n  \n", "holds no feedback records (it is empty or blank)"),
        ("fb.csv", "", "is empty. A ratings CSV needs a header line prompt,completion,rating[,labeler]"),
        ("fb.csv", "prompt,completion,rating\n\n", "has a header but no rating rows. Add rows"),
    ],
)
def test_empty_files_are_refused_naming_the_file(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert one_line(info.value).startswith(f"{path}: {problem}")
    assert info.value.line is None


LATIN1 = '{"kind": "rating", "prompt": "Le café était", "completion": " bon.", "rating": 4}'


def test_invalid_utf8_in_jsonl_names_line_and_column(tmp_path):
    path = tmp_path / "fb.jsonl"  # far enough down that the bad byte is not in the text reader's first chunk
    path.write_bytes(("\n".join([json.dumps(GOOD[0])] * 500) + "\n").encode() + LATIN1.encode("latin-1") + b"\n")
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert info.value.line == 501 and info.value.field is None
    message = one_line(info.value)
    assert message.startswith(f"{path}:501: not UTF-8: byte 0xe9 at column {LATIN1.index('é') + 1} (byte offset ")
    assert "Re-save the file as UTF-8" in message


def test_invalid_utf8_in_csv_names_the_physical_line(tmp_path):
    path = tmp_path / "fb.csv"  # CRLF line ends and a quoted cell over two lines: the bad byte is on physical line 4
    path.write_bytes('prompt,completion,rating\r\n"a"," b\r\nc",3\r\n"Le café",x,4\r\n'.encode("cp1252"))
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert one_line(info.value).startswith(f"{path}:4: not UTF-8: byte 0xe9 at column 8 ")
    assert info.value.fix.startswith("Re-save the file as UTF-8")


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "fb.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n", encoding="utf-16")
    with pytest.raises(FeedbackError, match=r"fb\.jsonl:1: the file is UTF-16 .* Re-save the file as UTF-8 \(e\.g\. iconv -f utf-16"):
        read_feedback(path)


def test_byte_order_mark_is_accepted(tmp_path):
    jsonl = tmp_path / "fb.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n", encoding="utf-8-sig")
    assert jsonl.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_feedback(jsonl) == [{"labeler": None, **r} for r in GOOD]
    table = tmp_path / "fb.csv"
    table.write_text("prompt,completion,rating\na,b,3\n", encoding="utf-8-sig")
    assert read_feedback(table) == [{"kind": "rating", "prompt": "a", "completion": "b", "rating": 3, "labeler": None}]


def test_long_csv_cell_is_accepted_and_the_csv_limit_restored(tmp_path):
    limit = csv.field_size_limit()
    path = tmp_path / "fb.csv"
    long = " " + "word " * 40_000  # 200 kB: over csv's default limit of 131,072
    path.write_text(f'prompt,completion,rating\na,"{long}",3\n', encoding="utf-8")
    [record] = read_feedback(path)
    assert record["completion"] == long
    assert csv.field_size_limit() == limit


def test_csv_cell_over_the_cap_names_line_column_and_length(tmp_path):
    limit = csv.field_size_limit()
    path = tmp_path / "fb.csv"
    path.write_text(f'prompt,completion,rating\na,b,3\nc,"{"x" * (MAX_CSV_CELL + 1)}",3\n', encoding="utf-8")
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert (info.value.line, info.value.field) == (3, "completion")
    assert one_line(info.value) == (
        f"{path}:3: field 'completion': the cell in column 2 is 10,000,001 characters long, over the 10,000,000 this reader "
        "accepts (a quote left open runs a cell on to the next quote). Close the quote, or shorten the cell."
    )
    assert csv.field_size_limit() == limit


def test_csv_quote_left_open_is_pointed_at(tmp_path):
    path = tmp_path / "fb.csv"
    path.write_text('prompt,completion,rating\na,b,3\n"c,d,4\ne,f,5\n', encoding="utf-8")
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert one_line(info.value) == (
        f"{path}:3: expected 3 cells like the header, got 1 (a cell runs over several lines: is a quote left open?). "
        "Fix the record or drop it."
    )


@pytest.mark.parametrize("line", ["[" * 100_000 + "]" * 100_000, json.dumps({**GOOD[0], "meta": json.loads("[" * 500 + "]" * 500)})])
def test_deeply_nested_json_is_refused_naming_the_line(tmp_path, line):
    path = write_jsonl(tmp_path / "fb.jsonl", [json.dumps(GOOD[0]), line])
    with pytest.raises(FeedbackError) as info:
        read_feedback(path)
    assert one_line(info.value).startswith(f"{path}:2: nested too deeply (more than 100 levels of [ ] or {{ }}")
    assert info.value.line == 2


def test_nesting_within_the_limit_is_read(tmp_path):
    record = {**GOOD[0], "meta": json.loads("[" * 99 + "]" * 99)}  # 100 levels with the record itself
    assert read_feedback(write_jsonl(tmp_path / "fb.jsonl", [json.dumps(record)])) == [record]


def test_repeated_records_are_kept_counted_and_warned_about(tmp_path):
    same = json.dumps({"rating": 4.0, "completion": " clean.", "prompt": "The room was", "labeler": "a", "kind": "rating"})
    second_round = json.dumps({**GOOD[0], "round": 2})  # an extra field tells a deliberate repeat apart
    path = write_jsonl(tmp_path / "fb.jsonl", [json.dumps(GOOD[0]), json.dumps(GOOD[1]), same, second_round, json.dumps(GOOD[1])])
    with pytest.warns(UserWarning) as caught:
        read = read_feedback_file(path)
    assert read.duplicates == ((3, 1), (5, 2))
    assert len(read.records) == 5 and read.records[2] == GOOD[0]
    [warning] = caught
    assert warning.filename == __file__  # points at the caller
    assert str(warning.message) == (
        f"{path}: 2 records repeat an earlier record exactly, on lines 3 (= line 1), 5 (= line 2); kept, so each repeat "
        'counts again. Delete the repeats if they are copies, or give repeated judgements a field that tells them apart (e.g. "round": 2).'
    )
    with pytest.warns(UserWarning, match=r"fb\.jsonl: 2 records repeat"):
        assert read_feedback(path) == read.records


def test_repeated_csv_rows_are_counted_and_distinct_files_read_silently(tmp_path):
    path = tmp_path / "fb.csv"
    path.write_text("prompt,completion,rating\na,b,3\na,b,3\na,b,4\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"fb\.csv: 1 record repeats an earlier record exactly, on line 3 \(= line 2\)"):
        assert read_feedback_file(path).duplicates == ((3, 2),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_feedback_file(write_jsonl(tmp_path / "fb.jsonl", [json.dumps(r) for r in GOOD])).duplicates == ()
