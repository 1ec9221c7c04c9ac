"""Readers + format adapters: good files, bad records (file + line/row + what was expected),
skip mode, HF save_to_disk layout, TFDS/ArrayRecord lazy imports, HH / UltraFeedback / PKU."""
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align_jax.data import (
    DataError,
    PreferencePair,
    PromptReference,
    RankedList,
    UnpairedExample,
    load_examples,
    pairs_to_unpaired,
    parse_hh_transcript,
    ranked_to_pairs,
)
from align_jax.data.readers import iter_records


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away."},
]


# ---------------------------------------------------------------- JSONL
def test_jsonl_pairs_good(tmp_path):
    res = load_examples(write_jsonl(tmp_path / "p.jsonl", PAIRS), "pairs")
    assert res.num_skipped == 0 and len(res) == 2
    assert res[0] == PreferencePair("2+2?", "4", "5")
    assert res[1].prompt == [{"role": "user", "content": "Hi"}] and res[1].rejected == "Go away."


def test_jsonl_bad_record_names_file_line_and_expectation(tmp_path):
    # a blank line still counts: the bad record is on line 4 of the file
    path = write_jsonl(tmp_path / "bad.jsonl",
                       [PAIRS[0], PAIRS[1], "", {"prompt": "x", "rejected": "y"}])
    with pytest.raises(DataError) as e:
        load_examples(path, "pairs")
    msg = str(e.value)
    assert str(path) in msg and "line 4" in msg and "missing field 'chosen'" in msg


@pytest.mark.parametrize("record, expected", [
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "expected str or list of messages, got int"),
    ({"prompt": "p", "chosen": None, "rejected": "b"}, "field 'chosen': expected str or list"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "message 0: expected"),
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a record object, got list"),
])
def test_jsonl_bad_record_kinds(tmp_path, record, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], record])
    with pytest.raises(DataError, match="line 2") as e:
        load_examples(path, "pairs")
    assert expected in str(e.value) and str(path) in str(e.value)


def test_skip_mode_counts_and_logs(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl",
                       [PAIRS[0], "{oops", {"prompt": "x"}, PAIRS[1], {"prompt": 1, "chosen": "",
                                                                      "rejected": ""}])
    res = load_examples(path, "pairs", skip_bad_records=True)
    assert len(res) == 2 and res.num_skipped == 3
    assert [m.split(": ")[0].split(", ")[-1] for m in res.skipped] == ["line 2", "line 3", "line 5"]
    assert sum("skipping bad record" in r.message for r in caplog.records) == 3


def test_field_map_and_qa(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Capital of France?", "a": "Paris", "k": 1}])
    res = load_examples(path, "prompt_reference", field_map={"q": "prompt", "a": "reference"})
    assert res[0] == PromptReference("Capital of France?", "Paris", None, {"k": 1})
    path = write_jsonl(tmp_path / "qa2.jsonl", [{"question": "1+1?", "answer": 2}])
    with pytest.raises(DataError, match="field 'answer': expected str, got int"):
        load_examples(path, "qa")


def test_json_array_dir_and_glob(tmp_path):
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards" / "b.jsonl", [PAIRS[1]])
    with open(tmp_path / "shards" / "a.json", "w") as f:
        json.dump([PAIRS[0]], f)
    res = load_examples(tmp_path / "shards", "pairs")  # sorted: a.json then b.jsonl
    assert [p.chosen for p in res] == ["4", "Hello!"]
    assert len(load_examples(str(tmp_path / "shards" / "*.jsonl"), "pairs")) == 1
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- Parquet / Arrow / HF dirs
def test_parquet_good_and_bad_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "chosen": ["x", None, "z"],
                             "rejected": ["y", "y", "y"]}), path)
    with pytest.raises(DataError) as e:
        load_examples(path, "pairs")
    msg = str(e.value)
    assert str(path) in msg and "row 1" in msg and "field 'chosen'" in msg and "got null" in msg
    res = load_examples(path, "pairs", skip_bad_records=True)
    assert [p.prompt for p in res] == ["a", "c"] and res.num_skipped == 1


def _write_hf_dataset(dirpath, rows, shards=2):
    """The `datasets` save_to_disk layout: Arrow IPC *stream* shards listed in state.json."""
    dirpath.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    files = []
    for i, chunk in enumerate(np.array_split(np.arange(len(rows)), shards)):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(dirpath / name), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table.slice(int(chunk[0]), len(chunk)))
        files.append({"filename": name})
    (dirpath / "state.json").write_text(json.dumps({"_data_files": files}))
    (dirpath / "dataset_info.json").write_text("{}")


def test_hf_saved_dir_and_dataset_dict(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(5)]
    rows[3]["chosen"] = None
    _write_hf_dataset(tmp_path / "ds" / "train", rows)
    _write_hf_dataset(tmp_path / "ds" / "test", rows[:2], shards=1)
    (tmp_path / "ds" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(DataError, match="pass split="):
        load_examples(tmp_path / "ds", "pairs")
    assert len(load_examples(tmp_path / "ds", "pairs", split="test")) == 2
    with pytest.raises(DataError, match=r"row 3 \(in data-00001-of-00002.arrow\)"):
        load_examples(tmp_path / "ds", "pairs", split="train")
    res = load_examples(tmp_path / "ds" / "train", "pairs", skip_bad_records=True)
    assert [p.prompt for p in res] == ["p0", "p1", "p2", "p4"]


def test_real_datasets_save_to_disk_if_available(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"chosen": [{"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": "bad"}],
             "score_chosen": 8.0} for i in range(3)]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows)}).save_to_disk(
        str(tmp_path / "uf"))
    res = load_examples(tmp_path / "uf")  # auto → conversational, single split picked
    assert res.format == "conversational"
    assert res[2] == PreferencePair([{"role": "user", "content": "q2"}], "good", "bad",
                                    {"score_chosen": 8.0})


# ---------------------------------------------------------------- TFDS / ArrayRecord (lazy)
def test_tfds_and_array_record_missing_package_messages(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # forces ImportError
    with pytest.raises(ImportError, match="pip install tensorflow-datasets array-record"):
        list(iter_records("tfds:hh_rlhf", split="train"))
    monkeypatch.setitem(sys.modules, "array_record", None)
    (tmp_path / "x.array_record").write_bytes(b"")
    with pytest.raises(ImportError, match="pip install array-record"):
        list(iter_records(tmp_path / "x.array_record"))


def test_tfds_data_source_decoding_with_fake_module(monkeypatch):
    """tfds.data_source yields dicts of bytes / numpy values; we must get plain Python."""
    calls = {}

    def data_source(name, split=None, data_dir=None, download=True):
        calls.update(name=name, split=split, download=download)
        return [{"prompt": b"Hi", "chosen": np.bytes_(b"ok"), "rejected": b"no",
                 "score": np.float32(0.5), "ids": np.array([1, 2])}]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(data_source=data_source))
    res = load_examples("tfds:my_pairs", "pairs", split="train")
    assert calls == {"name": "my_pairs", "split": "train", "download": False}
    assert res[0] == PreferencePair("Hi", "ok", "no", {"score": 0.5, "ids": [1, 2]})


def test_tfds_real_array_record_dataset(tmp_path):
    """A TFDS dataset prepared in ArrayRecord format (no TensorFlow), read back by name."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")

    class AlignJaxTinyPairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"prompt": text, "chosen": text, "rejected": text, "score": np.float32}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(3):
                yield i, {"prompt": f"p{i}", "chosen": "c", "rejected": "r", "score": 0.5}

    AlignJaxTinyPairs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    res = load_examples("tfds:align_jax_tiny_pairs", "pairs", split="train",
                        data_dir=str(tmp_path))
    assert sorted(p.prompt for p in res) == ["p0", "p1", "p2"]
    assert res[0].chosen == "c" and res[0].meta == {"score": 0.5}


def test_array_record_json_file(tmp_path):
    pytest.importorskip("array_record")
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "pairs.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    writer.write(json.dumps(PAIRS[0]).encode())
    writer.write(b"\xff not json")
    writer.close()
    with pytest.raises(DataError, match="row 1: expected a UTF-8 JSON record"):
        load_examples(path, "pairs")
    assert load_examples(path, "pairs", skip_bad_records=True)[0] == PreferencePair("2+2?", "4",
                                                                                    "5")


# ---------------------------------------------------------------- format adapters
def test_ultrafeedback_conversational(tmp_path):
    sys_u = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]
    good = {"prompt": "Hi", "chosen": sys_u + [{"role": "assistant", "content": "Hello"}],
            "rejected": sys_u + [{"role": "assistant", "content": "Meh"}], "score_chosen": 9.0}
    bad = {"prompt": "Hi", "chosen": good["chosen"],
           "rejected": [{"role": "user", "content": "Other"},
                        {"role": "assistant", "content": "x"}]}
    path = write_jsonl(tmp_path / "uf.jsonl", [good, bad])
    with pytest.raises(DataError, match="line 2.*same prompt messages"):
        load_examples(path, "ultrafeedback")
    res = load_examples(path, "ultrafeedback", skip_bad_records=True)
    assert res[0] == PreferencePair(sys_u, "Hello", "Meh", {"score_chosen": 9.0})


HH_CHOSEN = ("\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?"
             "\n\nAssistant: It is 6.")
HH_REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: No idea."


def test_hh_transcript_split(tmp_path):
    assert parse_hh_transcript(HH_CHOSEN) == [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "It is 6."}]
    mismatch = {"chosen": HH_CHOSEN, "rejected": "\n\nHuman: Other\n\nAssistant: x"}
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
                                               mismatch])
    with pytest.raises(DataError, match="line 2.*last '\\\\n\\\\nAssistant:' turn"):
        load_examples(path)  # auto-detects hh
    res = load_examples(path, "hh", skip_bad_records=True)
    ex = res[0]
    assert res.format == "hh" and res.num_skipped == 1
    assert ex.chosen == "It is 6." and ex.rejected == "No idea."
    assert ex.prompt == [{"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": "4."},
                         {"role": "user", "content": "And 3+3?"}]
    # the shared prefix is exactly the transcript up to and including the last "Assistant:"
    assert ex.meta["hh_prompt"] + " " + ex.chosen == HH_CHOSEN


def _pku(r0_safe, r1_safe, better=0, safer=1):
    return {"prompt": "How do I pick a lock?", "response_0": "R0", "response_1": "R1",
            "better_response_id": better, "safer_response_id": safer,
            "is_response_0_safe": r0_safe, "is_response_1_safe": r1_safe}


def test_pku_saferlhf_conversions(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [_pku(False, True), _pku(True, True, safer=0),
                                                _pku(False, False)])
    better = load_examples(path, "pku_better")
    safer = load_examples(path, "pku_safer")
    assert (better[0].chosen, better[0].rejected) == ("R0", "R1")
    assert (safer[0].chosen, safer[0].rejected) == ("R1", "R0")
    assert load_examples(path).format == "pku_better"
    ref = load_examples(path, "pku_reference")
    assert ref.num_filtered == 1 and ref.num_skipped == 0 and len(ref) == 2
    assert (ref[0].reference, ref[0].unsafe) == ("R1", "R0")   # safe one is the reference
    assert (ref[1].reference, ref[1].unsafe) == ("R0", None)   # both safe: the safer one
    assert ref[0].meta["better_response_id"] == 0
    bad = write_jsonl(tmp_path / "pku_bad.jsonl", [dict(_pku(True, False), better_response_id=2)])
    with pytest.raises(DataError, match="line 1: field 'better_response_id': expected 0 or 1"):
        load_examples(bad, "pku_better")
    bad = write_jsonl(tmp_path / "pku_bad2.jsonl", [dict(_pku(True, False), is_response_0_safe=1)])
    with pytest.raises(DataError, match="'is_response_0_safe': expected bool, got int"):
        load_examples(bad, "pku_reference")


def test_ranked_and_unpaired(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 3, 2]},
        {"prompt": "p", "responses": ["a", "b"], "scores": [1]},
        {"prompt": "q", "responses": ["a", "b"], "scores": [2, 2]}])
    with pytest.raises(DataError, match="line 2: fields 'responses' and 'scores': expected equal"):
        load_examples(path)
    res = load_examples(path, "ranked", skip_bad_records=True)
    assert res[0] == RankedList("p", ["a", "b", "c"], [1.0, 3.0, 2.0])
    assert ranked_to_pairs(res.examples) == [PreferencePair("p", "b", "a")]  # tie list: no pair
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "completion": "c", "label": True},
                                              {"prompt": "p", "completion": "c", "label": "yes"}])
    with pytest.raises(DataError, match="line 2: field 'label': expected bool, got str"):
        load_examples(path, "kto")
    assert load_examples(path, skip_bad_records=True)[0] == UnpairedExample("p", "c", True)
    assert pairs_to_unpaired([PreferencePair("p", "a", "b")]) == [
        UnpairedExample("p", "a", True), UnpairedExample("p", "b", False)]


def test_unknown_format_and_undetectable(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="unknown format"):
        load_examples(path, "nope")
    with pytest.raises(DataError, match="line 1: cannot detect the format"):
        load_examples(path)
