"""Where raw examples come from: the Hub, local csv/json/parquet files, or shipped corpora.

Every loader returns a ``datasets.DatasetDict`` plus, per split, a human-readable description of
where it came from (used in error messages), and is named by ``_target_`` in ``task/*.yaml``.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from tunelab.data.checks import RowNumbering
from tunelab.errors import DataError, unwrap
from tunelab.hub import hub_errors

FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
TEXT_BUILDERS = {"csv", "json", "text"}  # "text": one row per line, in a `text` column


@dataclass
class Source:
    """Loaded splits, where each came from, and how messages number its rows."""

    splits: datasets.DatasetDict
    origin: dict[str, str] = field(default_factory=dict)
    numbering: dict[str, RowNumbering] = field(default_factory=dict)

    def describe(self, split: str) -> str:
        return self.origin.get(split, "the dataset")

    def rows(self, split: str) -> RowNumbering:
        return self.numbering.get(split, RowNumbering())


def _as_mapping(data_files: str | Sequence[str] | Mapping[str, Any]) -> dict[str, list[str]]:
    if isinstance(data_files, str):
        data_files = {"train": data_files}
    elif not isinstance(data_files, Mapping):
        data_files = {"train": list(data_files)}
    return {
        split: [files] if isinstance(files, str) else list(files)
        for split, files in data_files.items()
        if files is not None
    }


def check_decodable(path: Path, encoding: str, field_name: str = "task.data.source.encoding") -> None:
    """Raise a DataError naming the file, line and byte if ``path`` is not valid ``encoding``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line, offset = 1, 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line += chunk[: err.start].count(b"\n")
                bad = chunk[err.start : err.end]
                raise DataError(
                    f"{path}: line {line} (byte {offset + err.start}) is not valid {encoding} (bytes {bad!r}). "
                    f"Set {field_name} to the file's encoding, e.g. {field_name}=latin-1"
                ) from None
            line += chunk.count(b"\n")
            offset += len(chunk)


def load(
    path: str = "",
    name: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    revision: str | None = None,
    encoding: str = "utf-8",
    **kwargs: Any,
) -> Source:
    """``datasets.load_dataset`` for a Hub dataset (``path=glue name=sst2``) or local files.

    Local files: ``path`` is a builder (csv, json, parquet) with ``data_files``, or ``data_files``
    alone with the builder taken from the extension.
    """
    if data_files is not None:
        return _load_files(path, _as_mapping(data_files), encoding, **kwargs)

    if not path:
        raise DataError("task.data.source needs a Hub dataset `path` or local `data_files`")
    fix = (
        "Download it where you have internet and point the task at local files, e.g. "
        "task=csv task.data.source.data_files.train=/data/train.csv task.data.source.data_files.test=/data/test.csv"
    )
    with hub_errors("dataset", f"{path}/{name}" if name else path, fix):
        splits = datasets.load_dataset(path, name, revision=revision, **kwargs)
    label = f"{path}/{name}" if name else path
    return Source(splits, {split: f"{label} [{split}]" for split in splits})


def _load_files(path: str, files: dict[str, list[str]], encoding: str, **kwargs: Any) -> Source:
    """Local files per split, read by the builder ``path`` names or their extension tells."""
    for split, paths in files.items():
        for p in paths:
            if not Path(p).is_file():
                raise DataError(f"data file for split '{split}' not found: {p} (task.data.source.data_files.{split})")
            if Path(p).stat().st_size == 0:
                raise DataError(f"data file for split '{split}' is empty (0 bytes): {p} (task.data.source.data_files.{split})")
    builder = path if path in FILE_BUILDERS.values() else FILE_BUILDERS.get(Path(files[next(iter(files))][0]).suffix)
    if builder is None:
        raise DataError(f"cannot tell the format of {files}: set task.data.source.path to csv, json, parquet or text")
    if builder in TEXT_BUILDERS:
        for paths in files.values():
            for p in paths:
                check_decodable(Path(p), encoding)
        kwargs["encoding"] = encoding
    if builder == "text":
        kwargs.setdefault("keep_linebreaks", True)  # as run_clm.py: newlines are part of the text
    if builder == "csv" and any(p.endswith(".tsv") for ps in files.values() for p in ps):
        kwargs.setdefault("delimiter", "\t")
    delimiter = kwargs.get("delimiter") or kwargs.get("sep") or ","
    try:
        splits = datasets.load_dataset(builder, data_files=files, **kwargs)
    except ValueError as err:
        if "corresponds to no data" not in str(err):
            raise
        split = str(err).split('"')[1] if '"' in str(err) else "?"
        raise DataError(f"split '{split}' is empty (0 rows): {', '.join(files.get(split, []))}") from None
    except datasets.exceptions.DatasetGenerationError as err:
        raise _unreadable(files, builder, encoding, delimiter, err.__cause__ or err) from err
    numbered = "field" not in kwargs  # records inside one JSON object: no file numbering
    return Source(
        splits,
        {split: ", ".join(paths) for split, paths in files.items()},
        {split: RowNumbering(tuple(paths) if numbered else (), builder, delimiter, encoding) for split, paths in files.items()},
    )


def _unreadable(files: Mapping[str, list[str]], builder: str, encoding: str, delimiter: str,
                cause: BaseException) -> DataError:
    """A DataError naming the file and line that ``datasets`` could not read (a malformed jsonl line,
    a csv row with more fields than its header), else the files and the reader's message."""
    for paths in files.values():
        for p in paths:
            problem = _first_malformed(Path(p), builder, encoding, delimiter)
            if problem:
                return DataError(f"{p}: {problem}")
    return DataError(f"could not read {', '.join(p for ps in files.values() for p in ps)} as {builder}: "
                     f"{type(cause).__name__}: {cause}")


def _first_malformed(path: Path, builder: str, encoding: str, delimiter: str) -> str | None:
    """What is wrong at the first malformed line of ``path`` (None if none is found)."""
    if builder not in ("csv", "json"):
        return None
    with path.open(encoding=encoding, errors="replace", newline="" if builder == "csv" else None) as f:
        if builder == "csv":
            reader = csv.reader(f, delimiter=delimiter)
            header = next((r for r in reader if r), [])
            for record in reader:
                if len(record) > len(header):
                    return (f"line {reader.line_num} has {len(record)} fields, the header has {len(header)} "
                            f"(an unquoted '{delimiter}' in a text? quote the field)")
            return None
        if f.read(1_000).lstrip().startswith("["):  # one JSON document
            f.seek(0)
            try:
                json.load(f)
            except json.JSONDecodeError as err:
                return f"line {err.lineno} is not valid JSON: {err.msg} (column {err.colno})"
            return None
        f.seek(0)
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number} is not valid JSON: {err.msg} (column {err.colno}): {line.strip()[:80]!r}"
            if not isinstance(record, dict):
                return f"line {number} is a JSON {type(record).__name__}, not an object of columns: {line.strip()[:80]!r}"
    return None


def _read_text(path: Path, encodings: Sequence[str]) -> str:
    data = path.read_bytes()
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    check_decodable(path, encodings[0])  # raises with line and byte
    raise AssertionError("unreachable")


def _bbc_articles(root: str, encodings: Sequence[str]) -> Iterator[dict[str, str]]:
    for topic in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for file in sorted(topic.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
            text = _read_text(file, encodings).strip()
            headline, _, body = text.partition("\n")
            yield {
                "text": text,
                "headline": headline.strip(),
                "body": body.strip(),
                "label": topic.name,
                "file": f"{topic.name}/{file.name}",
            }


def bbc_news(root: str, encoding: str | Sequence[str] = ("utf-8", "cp1252")) -> Source:
    """BBC News articles in ``root/<topic>/*.txt`` (first line the headline), one ``train`` split.

    ``encoding`` may list several encodings tried in order per file: the corpus is utf-8 except
    one cp1252 file.
    """
    if not Path(root).is_dir():
        raise DataError(f"BBC News folder not found: {root} (task.data.source.root)")
    encodings = (encoding,) if isinstance(encoding, str) else tuple(encoding)  # a list would be sharded
    try:
        ds = datasets.Dataset.from_generator(_bbc_articles, gen_kwargs={"root": str(root), "encodings": encodings})
    except datasets.exceptions.DatasetGenerationError as err:
        raise unwrap(err) from None
    return Source(datasets.DatasetDict({"train": ds}), {"train": str(root)})
