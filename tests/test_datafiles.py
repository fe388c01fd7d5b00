"""Loading users' data files: formats, field mapping and error messages naming file and line."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from hftguard.data.files import load_examples_file, parse_fields
from hftguard.errors import ConfigError, DataError

ROWS = [
    {"prompt": "Say hi", "response": "hi", "label": "greeting", "category": "chat"},
    {"prompt": "Add 2 and 3", "input": "2, 3", "response": "5"},
]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    examples = load_examples_file(path, kind="benign")
    assert [e.prompt for e in examples] == ["Say hi", "Add 2 and 3"]
    assert [e.response for e in examples] == ["hi", "5"]
    assert examples[1].input == "2, 3"
    assert {e.kind for e in examples} == {"benign"}
    assert examples[0].meta == {
        "source": str(path),
        "id": "d.jsonl:1",
        "label": "greeting",
        "category": "chat",
    }
    assert examples[1].meta == {"source": str(path), "id": "d.jsonl:2"}


def test_jsonl_skips_blank_lines_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n\n")
    assert len(load_examples_file(path, kind="harmful")) == 2
    limited = load_examples_file(path, kind="harmful", limit=1)
    assert [e.prompt for e in limited] == ["Say hi"]


def test_json_list_and_data_wrapper(tmp_path: Path) -> None:
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps(ROWS))
    wrapped = tmp_path / "b.json"
    wrapped.write_text(json.dumps({"data": ROWS}))
    for path in (plain, wrapped):
        examples = load_examples_file(path, kind="refusal")
        assert [e.response for e in examples] == ["hi", "5"]
        assert examples[1].meta["id"] == f"{path.name}:2"


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer", "label"])
        writer.writeheader()
        writer.writerow({"question": "What is 2+2?", "answer": "It is 4,\nclearly.", "label": "4"})
        writer.writerow({"question": "What is 3+3?", "answer": "6", "label": ""})
    examples = load_examples_file(path, kind="benign")
    assert [e.prompt for e in examples] == ["What is 2+2?", "What is 3+3?"]
    assert examples[0].response == "It is 4,\nclearly."
    assert examples[0].meta["label"] == "4"
    assert "label" not in examples[1].meta


def test_aliases_alpaca_and_completion(tmp_path: Path) -> None:
    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [{"instruction": "Classify", "input": "good film", "output": "positive"}],
    )
    (example,) = load_examples_file(alpaca, kind="benign")
    assert (example.prompt, example.input, example.response) == (
        "Classify",
        "good film",
        "positive",
    )
    other = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completion": "c"}])
    assert load_examples_file(other, kind="benign")[0].response == "c"


def test_field_mapping(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"q": "Why?", "a": "Because.", "prompt": "ignored", "topic": "x"}]
    )
    (example,) = load_examples_file(
        path, kind="benign", fields={"prompt": "q", "response": "a", "category": "topic"}
    )
    assert (example.prompt, example.response, example.meta["category"]) == ("Why?", "Because.", "x")


def test_eval_files_need_no_response(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "a question"}])
    with pytest.raises(DataError, match="response"):
        load_examples_file(path, kind="harmful")
    (example,) = load_examples_file(path, kind="harmful", require_response=False)
    assert example.response == ""


def test_parquet(tmp_path: Path) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pyarrow.Table.from_pylist([{"prompt": "p1", "response": "r1"}]), path)
    (example,) = load_examples_file(path, kind="benign")
    assert (example.prompt, example.response, example.meta["id"]) == ("p1", "r1", "d.parquet:1")


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    with pytest.raises(DataError) as info:
        load_examples_file(path, kind="benign")
    assert "pip install pyarrow" in (info.value.hint or "")
    assert str(path) in info.value.message


def error_for(path: Path, **kwargs: object) -> DataError:
    with pytest.raises(DataError) as info:
        load_examples_file(path, kind="benign", **kwargs)  # type: ignore[arg-type]
    assert str(path) in info.value.message
    return info.value


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "not found" in error_for(tmp_path / "nope.jsonl").message
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    assert "directory" in error_for(folder).message


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    error = error_for(path)
    assert ".txt" in error.message and ".jsonl" in (error.hint or "")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    assert "UTF-8" in error_for(path).message


def test_malformed_jsonl_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x", "response": \n')
    assert "line 3" in error_for(path).message


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n {"prompt": "a", "response": "b"},\n {"prompt": oops}\n]')
    assert "line 3" in error_for(path).message


def test_jsonl_saved_as_json_gets_hint(tmp_path: Path) -> None:
    path = tmp_path / "lines.json"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n")
    assert ".jsonl" in (error_for(path).hint or "")


def test_json_wrong_top_level(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"rows": ROWS}))
    assert "list of objects" in error_for(path).message


def test_row_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [ROWS[0], ["a", "list"]])
    error = error_for(path)
    assert "line 2" in error.message and "object" in error.message
    json_path = tmp_path / "rows.json"
    json_path.write_text(json.dumps([ROWS[0], ROWS[1], "text"]))
    assert "item 3" in error_for(json_path).message


def test_missing_required_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "f.jsonl", [ROWS[0], {"text": "no prompt", "response": "r"}])
    error = error_for(path)
    assert "line 2" in error.message and "'prompt'" in error.message
    assert "instruction" in error.message  # the names that were tried
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "p"}])
    error = error_for(path)
    assert "line 1" in error.message and "'response'" in error.message
    path = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "  ", "response": "r"}])
    assert "empty" in error_for(path).message


def test_mapped_column_missing_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p", "response": "r"}])
    error = error_for(path, fields={"prompt": "question_text"})
    assert "question_text" in error.message and "line 1" in error.message


def test_non_text_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": {"nested": 1}, "response": "r"}])
    assert "must be text" in error_for(path).message


def test_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n")
    assert "line 3" in error_for(path).message
    path = tmp_path / "short.csv"
    path.write_text("prompt,response\na,b\nc\n")
    error = error_for(path)
    assert "line 3" in error.message and "'response'" in error.message


def test_empty_files(tmp_path: Path) -> None:
    for name, text in (("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "prompt,response\n")):
        path = tmp_path / name
        path.write_text(text)
        assert "no records" in error_for(path).message


def test_bad_arguments(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(ConfigError):
        load_examples_file(path, kind="toxic")
    with pytest.raises(ConfigError):
        load_examples_file(path, kind="benign", fields={"question": "q"})
    with pytest.raises(ConfigError):
        load_examples_file(path, kind="benign", limit=-1)


def test_parse_fields() -> None:
    assert parse_fields("prompt=question,response=answer") == {
        "prompt": "question",
        "response": "answer",
    }
    assert parse_fields(" prompt = q , label=y ,") == {"prompt": "q", "label": "y"}
    assert parse_fields("") == {}
    for bad in ("prompt", "prompt=", "=q", "prompt=a,prompt=b", "question=q"):
        with pytest.raises(ConfigError) as info:
            parse_fields(bad)
        assert info.value.hint
