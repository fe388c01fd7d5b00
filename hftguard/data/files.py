"""Load users' own data files (JSONL, JSON, CSV, Parquet) as :class:`Example` records.

Users bring their own alignment, attack, task and evaluation data in whatever shape they have it, so
common column names are recognised automatically and any other can be mapped. Every problem is a
:class:`DataError` that names the file, the line or row, and what to change, because a bad row deep
inside a file must not surface as a traceback halfway through a training run.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import lzma
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from hftguard.errors import ConfigError, DataError
from hftguard.records import KINDS, Example

#: Our field names and the column names tried, in order, when ``fields`` does not map them.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "instruction", "question", "goal"),  # goal: AdvBench-style CSVs
    "input": ("input",),
    "response": ("response", "output", "answer", "completion"),
    "label": ("label",),
    "category": ("category",),
    # a reference refusal of a harmful prompt (kept in meta; eval's likelihood margin uses it)
    "refusal": ("refusal",),
}
#: Column names of a chat ``messages`` list (``[{"role": "user", "content": "..."}, ...]``; the
#: ShareGPT spelling ``{"from": "human", "value": "..."}`` is read too), tried in order.
MESSAGE_ALIASES: tuple[str, ...] = ("messages", "conversations")
#: Everything ``fields`` can map: the text fields and ``messages``.
MAPPABLE: dict[str, tuple[str, ...]] = {**FIELD_ALIASES, "messages": MESSAGE_ALIASES}
#: Options of a ``data_fields`` table that are no column mapping.
FIELD_OPTIONS: tuple[str, ...] = ("system_prompt",)
_ROLES = {"human": "user", "gpt": "assistant", "model": "assistant", "bot": "assistant"}
FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
#: Compressions read transparently after a text format's extension (``train.jsonl.xz``): the
#: BeaverTails files on the Hugging Face hub are ``.jsonl.xz`` (older) or ``.jsonl.gz`` (newer).
COMPRESSIONS: dict[str, Any] = {".xz": lzma.open, ".gz": gzip.open}


class RawRecord(NamedTuple):
    """One record of a data file, as parsed, with where it was found."""

    #: Location for messages: ``line 3`` (JSONL, CSV), ``item 3`` (JSON), ``row 3`` (Parquet).
    where: str
    #: 1-based record number (blank lines not counted).
    number: int
    #: The parsed record: a dict for well-formed files (callers check, it may be anything).
    record: Any


def parse_fields(
    spec: str, aliases: dict[str, tuple[str, ...]] | None = None, *, syntax: str | None = None
) -> dict[str, str]:
    """Parse ``"prompt=question,response=answer"`` into ``{"prompt": "question", ...}``.

    ``aliases``: the fields that can be mapped (default :data:`FIELD_ALIASES`); ``syntax``: the
    hint shown for a malformed mapping (how the caller's option is written).
    """
    known = MAPPABLE if aliases is None else aliases
    syntax = syntax or (
        "write FIELD=COLUMN pairs separated by commas, e.g. prompt=question,response=answer"
    )
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        ours, sep, theirs = (s.strip() for s in part.partition("="))
        if not sep or not ours or not theirs:
            raise ConfigError(f"bad field mapping {part!r} in {spec!r}", hint=syntax)
        if ours not in known:
            raise ConfigError(
                f"unknown field {ours!r} in field mapping {spec!r}",
                hint=f"fields that can be mapped: {', '.join(known)}",
            )
        if ours in mapping:
            raise ConfigError(f"field {ours!r} is mapped twice in {spec!r}", hint=syntax)
        mapping[ours] = theirs
    return mapping


def field_mapping(value: Any, where: str) -> tuple[dict[str, str], str]:
    """A ``data_fields`` entry as ``(mapping, system_prompt)``.

    ``value`` is a ``"prompt=goal,response=target"`` string or a table ``{prompt = "goal"}``; a
    table may also hold ``system_prompt`` (text put before every prompt of that dataset).
    ``where`` names the config key in messages (``data_fields.task``).
    """
    if value is None or value == "":
        return {}, ""
    if isinstance(value, str):
        return parse_fields(
            value, syntax=f"{where}: write FIELD=COLUMN pairs, e.g. prompt=goal"
        ), ""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: expected a field mapping, got {value!r}",
            hint='write "prompt=goal,response=target" or a table {prompt = "goal"}',
        )
    mapping: dict[str, str] = {}
    system = ""
    for ours, theirs in value.items():
        if ours in FIELD_OPTIONS:
            if not isinstance(theirs, str):
                raise ConfigError(f"{where}.{ours}: expected text, got {theirs!r}")
            system = theirs
            continue
        if ours not in MAPPABLE:
            raise ConfigError(
                f"{where}: unknown field {ours!r} in the field mapping",
                hint=f"fields that can be mapped: {', '.join(MAPPABLE)}; "
                f"options: {', '.join(FIELD_OPTIONS)}",
            )
        if not isinstance(theirs, str) or not theirs.strip():
            raise ConfigError(f"{where}.{ours}: expected a column name, got {theirs!r}")
        mapping[ours] = theirs.strip()
    return mapping, system


def load_examples_file(
    path: str | Path,
    *,
    kind: str,
    fields: dict[str, str] | None = None,
    limit: int | None = None,
    require_response: bool = True,
    system_prompt: str = "",
) -> list[Example]:
    """Read ``path`` into examples of ``kind``, in file order.

    Args:
        path: A ``.jsonl``/``.ndjson``, ``.json`` (a list of objects or ``{"data": [...]}``),
            ``.csv`` or ``.parquet`` file (Parquet needs ``pyarrow``); the text formats may be
            compressed (``.jsonl.xz``, ``.jsonl.gz``, ...). Labels and categories are
            kept as text in ``meta`` whatever the format.
        kind: ``benign``, ``harmful`` or ``refusal``.
        fields: Maps our field names (prompt, input, response, label, category, refusal,
            messages) to the file's column names; unmapped fields use the usual names (see
            :data:`FIELD_ALIASES`). ``label``, ``category`` and ``refusal`` go to ``meta``. A
            record without a prompt column but with a chat ``messages`` list (or one mapped
            with ``messages=COLUMN``) is read as a conversation: see :func:`_conversation`.
        limit: Keep only the first ``limit`` records.
        require_response: False for evaluation prompts, which need no reference answer.
        system_prompt: Text put before every prompt (a blank line between).
    """
    path = Path(path)
    return examples_from_records(
        read_records(path),
        source=str(path),
        name=path.name,
        kind=kind,
        fields=fields,
        limit=limit,
        require_response=require_response,
        system_prompt=system_prompt,
    )


def examples_from_records(
    records: Iterable[tuple[str, int, Any]],
    *,
    source: str,
    name: str,
    kind: str,
    fields: dict[str, str] | None = None,
    limit: int | None = None,
    require_response: bool = True,
    system_prompt: str = "",
    meta: dict[str, Any] | None = None,
) -> list[Example]:
    """Examples of ``kind`` from ``(where, number, record)`` triples (a file's or a hub split's).

    ``source`` names the data in messages and ``meta["source"]``; ``name`` prefixes the ids
    (``name:number``); ``meta`` is added to every example's meta. See :func:`load_examples_file`.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown example kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    fields = dict(fields or {})
    for ours in fields:
        if ours not in MAPPABLE:
            raise ConfigError(
                f"unknown field {ours!r} in the field mapping for {source}",
                hint=f"fields that can be mapped: {', '.join(MAPPABLE)}",
            )
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    examples: list[Example] = []
    for where, number, record in records:
        if limit is not None and len(examples) >= limit:
            break
        ex = _example(source, where, number, record, kind, fields, require_response, name)
        if system_prompt:
            ex = replace(ex, prompt=f"{system_prompt}\n\n{ex.prompt}")
        if meta:
            ex.meta.update(meta)
        examples.append(ex)
    if not examples and limit != 0:
        raise DataError(f"{source}: the file contains no records", hint="add at least one example")
    return examples


def file_format(path: str | Path) -> tuple[str, str | None] | None:
    """``(format, compression)`` of a data file by its extension, or None if not a data file.

    ``train.jsonl`` -> ``("jsonl", None)``; ``train.jsonl.xz`` -> ``("jsonl", ".xz")``. Parquet
    files are never compressed this way (they compress internally).
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if not suffixes:
        return None
    compression = suffixes[-1] if suffixes[-1] in COMPRESSIONS else None
    if compression is not None:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None or (compression is not None and fmt == "parquet"):
        return None
    return fmt, compression


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """The records of a data file in file order, whatever its format; nothing is validated.

    Reads ``.jsonl``/``.ndjson``, ``.json`` (a list, or ``{"data": [...]}``), ``.csv`` and
    ``.parquet`` (needs ``pyarrow``); the text formats may be compressed (``.xz``, ``.gz``). Every
    problem (missing file, unknown extension, bad encoding, malformed line) is a
    :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    found = file_format(path)
    if found is None:
        compressed = "".join(path.suffixes[-2:]) if path.suffix.lower() in COMPRESSIONS else ""
        raise DataError(
            f"{path}: unknown data file extension {compressed or path.suffix or '(none)'!r}",
            hint=f"use one of: {', '.join(FORMATS)} (the text formats also as .xz or .gz)",
        )
    fmt, compression = found
    if not path.exists():
        raise DataError(f"{path}: file not found", hint="check the path (relative to the cwd)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file", hint="point to a file")
    if fmt == "parquet":
        return _parquet(path)
    try:
        if compression is None:
            text = path.read_text(encoding="utf-8-sig")
        else:
            with COMPRESSIONS[compression](path, "rb") as stream:
                text = stream.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot be read as UTF-8 text (byte {exc.start})",
            hint="save the file with UTF-8 encoding",
        ) from exc
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as exc:
        raise DataError(
            f"{path}: cannot be decompressed as {compression} ({exc})",
            hint="check that the download is complete, or decompress the file yourself",
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return {"jsonl": _jsonl, "json": _json, "csv": _csv}[fmt](path, text)


def _jsonl(path: Path, text: str) -> Iterator[RawRecord]:
    number = 0
    # split on \n only: JSON strings may legally contain characters str.splitlines() breaks on
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {line_no}: malformed JSON ({exc.msg}, column {exc.colno})",
                hint="each line of a .jsonl file must be one complete JSON object",
            ) from exc
        number += 1
        yield RawRecord(f"line {line_no}", number, record)


def _json(path: Path, text: str) -> Iterator[RawRecord]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = 'the file must hold a JSON list of objects, or {"data": [...]}'
        if exc.msg == "Extra data":
            hint = "this looks like JSON Lines (one object per line): rename the file to .jsonl"
        raise DataError(
            f"{path}: line {exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})", hint=hint
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f'{path}: expected a list of objects or {{"data": [...]}}, '
            f"found a JSON {type(data).__name__}",
            hint="wrap the records in a list",
        )
    for number, record in enumerate(data, start=1):
        yield RawRecord(f"item {number}", number, record)


def _csv(path: Path, text: str) -> Iterator[RawRecord]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise DataError(
                    f"{path}: line {reader.line_num}: more values than header columns",
                    hint="quote values that contain commas",
                )
            yield RawRecord(
                f"line {reader.line_num}",
                number,
                {k: v for k, v in row.items() if v is not None and v != ""},
            )
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc


def _parquet(path: Path) -> Iterator[RawRecord]:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(
            f"{path}: reading Parquet files needs the pyarrow package",
            hint="pip install pyarrow (or convert the file to JSONL)",
        )
    import pyarrow.parquet as pq  # optional dependency, imported only when needed

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from exc
    for number, record in enumerate(rows, start=1):
        yield RawRecord(f"row {number}", number, record)


def _value(
    path: Path | str, where: str, record: dict[str, Any], ours: str, fields: dict[str, str]
) -> str | None:
    """The value of our field ``ours`` in ``record`` (mapped or by alias), as text, or None."""
    names = (fields[ours],) if ours in fields else FIELD_ALIASES[ours]
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DataError(
                f"{path}: {where}: field {name!r} must be text, found {type(value).__name__}",
                hint="store prompts, inputs, responses, labels and categories as strings",
            )
        return str(value)
    return None


def _conversation(
    path: Path | str, where: str, turns: Any, column: str
) -> tuple[str, str, dict[str, Any]]:
    """``(prompt, response, meta)`` of a chat ``messages`` list.

    The response is the final assistant turn (empty when the conversation ends with the user:
    an evaluation prompt); the prompt is the last user turn before it. System messages and the
    earlier turns are put before that user turn, as context (``System:``/``User:``/
    ``Assistant:`` lines are not added for a lone system message: its text comes first, then a
    blank line, then the user turn), and also kept in ``meta["system"]`` and ``meta["history"]``.
    """
    bad = DataError(
        f"{path}: {where}: field {column!r} must be a list of messages "
        '[{"role": "user", "content": "..."}, ...]',
        hint="roles: system, user, assistant (ShareGPT's from/value with human/gpt also works)",
    )
    if not isinstance(turns, list) or not turns:
        raise bad
    parsed: list[tuple[str, str]] = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise bad
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise bad
        role = _ROLES.get(role.strip().lower(), role.strip().lower())
        if role not in ("system", "user", "assistant"):
            raise DataError(
                f"{path}: {where}: unknown message role {role!r} in {column!r}",
                hint="roles: system, user, assistant",
            )
        parsed.append((role, content))
    response = ""
    if parsed[-1][0] == "assistant":
        response = parsed.pop()[1]
    if not parsed or parsed[-1][0] != "user":
        raise DataError(
            f"{path}: {where}: the conversation in {column!r} has no user turn before its final "
            "answer",
            hint="end each conversation with a user turn, optionally followed by the assistant's",
        )
    prompt = parsed.pop()[1]
    system = "\n\n".join(c for r, c in parsed if r == "system")
    history = [{"role": r, "content": c} for r, c in parsed if r != "system"]
    context = [system] if system else []
    context += [f"{turn['role'].capitalize()}: {turn['content']}" for turn in history]
    if history:
        context.append(f"User: {prompt}")
        prompt = "\n\n".join(context)
    elif system:
        prompt = f"{system}\n\n{prompt}"
    meta: dict[str, Any] = {}
    if system:
        meta["system"] = system
    if history:
        meta["history"] = history
    return prompt, response, meta


def _messages(record: dict[str, Any], fields: dict[str, str]) -> tuple[str, Any] | None:
    """``(column, value)`` of the record's chat messages: the mapped column, or else (when the
    record has no prompt column) the first of :data:`MESSAGE_ALIASES` it has."""
    if "messages" in fields:
        return fields["messages"], record.get(fields["messages"])
    for name in MESSAGE_ALIASES:
        if isinstance(record.get(name), list):
            return name, record[name]
    return None


def _example(
    path: Path | str,
    where: str,
    number: int,
    record: Any,
    kind: str,
    fields: dict[str, str],
    require_response: bool,
    name: str | None = None,
) -> Example:
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: {where}: expected a JSON object, found {type(record).__name__}",
            hint='each record must look like {"prompt": "...", "response": "..."}',
        )
    values = {ours: _value(path, where, record, ours, fields) for ours in FIELD_ALIASES}
    extra_meta: dict[str, Any] = {}
    chat = _messages(record, fields)
    if chat is not None and ("messages" in fields or values["prompt"] is None):
        column, turns = chat
        if turns is None:
            raise DataError(
                f"{path}: {where}: required field 'messages' is missing (looked for: {column})",
                hint="map the right column with fields, e.g. messages=my_column",
            )
        prompt, response, extra_meta = _conversation(path, where, turns, column)
        values["prompt"] = prompt
        if response or values["response"] is None:
            values["response"] = response or None
    for ours, required in (("prompt", True), ("response", require_response)):
        value = values[ours]
        if required and (value is None or not value.strip()):
            names = (fields[ours],) if ours in fields else FIELD_ALIASES[ours]
            state = "is empty" if value is not None else "is missing"
            raise DataError(
                f"{path}: {where}: required field {ours!r} {state} "
                f"(looked for: {', '.join(names)})",
                hint=f"map the right column with fields, e.g. {ours}=my_column"
                if value is None
                else f"give every record a non-empty {ours}",
            )
    label = name if name is not None else Path(path).name
    meta: dict[str, Any] = {"source": str(path), "id": f"{label}:{number}", **extra_meta}
    for extra in ("label", "category", "refusal"):
        if values[extra] is not None:
            meta[extra] = values[extra]
    return Example(
        prompt=values["prompt"] or "",
        response=values["response"] or "",
        kind=kind,  # type: ignore[arg-type]  # validated against KINDS above
        input=values["input"] or "",
        meta=meta,
    )
