"""Fault injection, data (issue 12): every bad record names file, line and field (invalid UTF-8
included); JSON errors carry the right line AND column (oracle: the offending character's index
found with str.index, not json's own report); one empty-response rule across formats; over-long
prompts/responses counted; skip_bad_records on every experiment's command line; data and path
errors of a real experiment are one line."""

import json
import re

import pytest

from align_jax.cli import parse_overrides
from align_jax.data import DataError, load_examples, load_report
from align_jax.data.schemas import PreferencePair
from align_jax.data.tokenize import TokenizeConfig, count_truncated
from fault_utils import assert_one_line_error, experiment_module, run, word_tokenizer

GOOD = {"prompt": "q1 q2", "chosen": "g1", "rejected": "b1"}


def _write(path, lines):
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def test_invalid_utf8_names_file_line_and_column(tmp_path):
    bad = b'{"prompt": "q\xff1", "chosen": "g1", "rejected": "b1"}'
    path = _write(tmp_path / "p.jsonl", [json.dumps(GOOD)] * 2 + [bad, json.dumps(GOOD)])
    col = bad.index(b"\xff") + 1  # all ASCII before it: byte index = character index
    with pytest.raises(DataError) as e:
        load_examples(path)
    assert str(e.value) == (f"{path}, line 3: invalid UTF-8 at column {col} (byte 0xff) "
                            "(skip_bad_records=true skips and counts bad records)")
    res = load_examples(path, skip_bad_records=True)
    assert (len(res), res.num_skipped) == (3, 1) and "line 3" in res.skipped[0]


def test_invalid_utf8_in_a_json_array_names_its_line(tmp_path):
    path = _write(tmp_path / "p.json", [b"[", json.dumps(GOOD).encode() + b",",
                                         b'{"prompt": "\xe9t\xe9", "chosen": "g", "rejected": "b"}',
                                         b"]"])
    with pytest.raises(DataError, match=r"p\.json, line 3: invalid UTF-8 at column 13"):
        load_examples(path)


def test_json_error_column_is_the_character_in_its_line(tmp_path):
    mid = '{"prompt": "What is 2+2?", "chosen": "4" "rejected": "5"}'
    cut = '{"prompt": "What is 2+2?", "chosen": "44", '  # a line torn after 43 characters
    path = _write(tmp_path / "p.jsonl", [json.dumps(GOOD), mid, cut])
    col = mid.index(' "rejected"') + 2  # 1-based column of the quote that lacks a comma
    with pytest.raises(DataError) as e:
        load_examples(path)
    assert str(e.value).startswith(f"{path}, line 2: invalid JSON (Expecting ',' delimiter at "
                                   f"column {col})")
    res = load_examples(path, skip_bad_records=True)
    assert res.num_skipped == 2
    assert res.skipped[1] == (f"{path}, line 3: invalid JSON (Expecting property name enclosed "
                              f"in double quotes at column {len(cut) + 1} (end of line))")
    assert len(cut) + 1 == 44  # the error is at character 44, not "column 1" as before


def test_json_array_errors_and_records_carry_file_lines(tmp_path):
    lines = ["[", "  " + json.dumps(GOOD) + ",", '  {"prompt": "q", "chosen": "g" "rejected": "b"}',
             "]"]
    path = _write(tmp_path / "a.json", lines)
    with pytest.raises(DataError) as e:
        load_examples(path)
    col = lines[2].index(' "rejected"') + 2
    assert str(e.value) == f"{path}, line 3: invalid JSON (Expecting ',' delimiter at column {col})"
    empty = _write(tmp_path / "b.json", ["[", "  " + json.dumps(GOOD) + ",",
                                         "  " + json.dumps({**GOOD, "chosen": ""}), "]"])
    with pytest.raises(DataError, match=r"b\.json, line 3 \(row 1\): field 'chosen'"):
        load_examples(empty)


P = "q1 q2"
EMPTY = [  # (format, record with one empty response, the field named)
    ("pairs", {"prompt": P, "chosen": "", "rejected": "b1"}, "chosen"),
    ("pairs", {"prompt": P, "chosen": "g1", "rejected": "  \n"}, "rejected"),
    ("pairs", {"prompt": P, "chosen": [{"role": "assistant", "content": ""}], "rejected": "b"},
     "chosen"),
    ("conversational", {"chosen": [{"role": "user", "content": P},
                                   {"role": "assistant", "content": ""}],
                        "rejected": [{"role": "user", "content": P},
                                     {"role": "assistant", "content": "b1"}]}, "chosen"),
    ("hh", {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
     "chosen"),
    ("prompt_reference", {"prompt": P, "reference": ""}, "reference"),
    ("qa", {"question": P, "answer": " "}, "answer"),
    ("unpaired", {"prompt": P, "completion": "", "label": True}, "completion"),
    ("ranked", {"prompt": P, "responses": ["g1", ""], "scores": [1, 0]}, "responses[1]"),
    ("pku_better", {"prompt": P, "response_0": "a", "response_1": "", "better_response_id": 0},
     "response_1"),
]


@pytest.mark.parametrize("fmt,rec,field", EMPTY, ids=[f"{f}:{k}" for f, _, k in EMPTY])
def test_one_rule_for_empty_responses_in_every_format(tmp_path, fmt, rec, field):
    path = _write(tmp_path / "d.jsonl", [json.dumps(rec)])
    with pytest.raises(DataError, match=rf"d\.jsonl, line 1: field '{re.escape(field)}': "
                                        r"expected a non-empty response"):
        load_examples(path, fmt)
    res = load_examples(path, fmt, skip_bad_records=True)
    assert (len(res), res.num_skipped) == (0, 1)


def test_overlong_prompts_and_responses_are_counted_in_the_report(tmp_path, capsys):
    tok = word_tokenizer()
    cfg = TokenizeConfig(max_prompt_len=4, max_completion_len=8)
    long_prompt = " ".join(["q3"] * 20000)  # the 20,000-word prompt
    pairs = [PreferencePair(long_prompt, "g1", "b1"), PreferencePair("q1", "g1 " * 12, "b2"),
             PreferencePair("q1 q2", "g1", "b1")]
    counts = count_truncated(tok, pairs, cfg)
    # oracle: the tokenizer is one token per word, plus EOS on responses
    assert counts == {"prompts": 3, "prompts_truncated": 1, "max_prompt_len": 4,
                      "responses": 6, "responses_truncated": 1, "max_response_len": 8}
    load_report.write(tmp_path)  # start from a clean report (other tests loaded data)
    path = _write(tmp_path / "p.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "chosen": ""})])
    load_examples(path, skip_bad_records=True)
    load_report.note_truncation("train", counts)
    load_report.write(tmp_path)
    rep = json.loads((tmp_path / "data_report.json").read_text())
    assert rep["truncation"]["train"] == counts
    assert [(x["examples"], x["skipped"]) for x in rep["loads"]] == [(1, 1)]
    assert ("p.jsonl: 1 examples, 1 skipped, 0 filtered; train: 1/3 prompts truncated to 4 "
            "tokens, 1/6 responses to 8") in capsys.readouterr().out


EXPERIMENTS = ["dpo", "listwise", "rpo_hh", "refalign_general", "refalign_confidence",
               "refalign_safety"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_skip_bad_records_is_on_every_command_line(name):
    assert parse_overrides(experiment_module(name).Config(), ["skip_bad_records=true"]).skip_bad_records


def test_data_and_path_errors_of_an_experiment_are_one_line(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD)] * 2 + [b'{"prompt": "\xff"}'])
    res = run("dpo.py", [f"data={bad}", f"out_dir={tmp_path / 'r1'}"])
    assert_one_line_error(res, f"error: {bad}, line 3: invalid UTF-8 at column 13")
    res = run("dpo.py", [f"model={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'r2'}"])
    assert_one_line_error(res, "error: ", "nowhere")
