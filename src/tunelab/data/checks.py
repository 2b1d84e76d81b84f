"""Input checks every datamodule shares: required columns, text columns, the empty-text policy, and
row numbers as the user's file has them.

Rows are named as in the user's file, counted before any row is dropped: the datamodule adds a hidden
``ROW`` column (each row's position in its split as loaded, from 0) before validation and removes it
once the split is tokenized; ``RowNumbering`` turns those positions into the user's numbers:

- csv/tsv: ``data rows 4, 9 (file lines 5, 10)``: data rows count from 1 after the header; file lines
  also count the header, blank lines (which the reader skips) and quoted fields that span lines;
- jsonl and txt: ``lines 5, 10``: lines of the file, from 1 (the reader skips blank jsonl lines);
- json arrays and parquet: ``records 4, 9``, from 1;
- Hub and other datasets: ``rows at index 3, 8``, from 0 as in ``dataset[i]``.

Rows from a split of several files name their file.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROW = "__tunelab_row__"  # the hidden column: a row's position in its split as loaded
MAX_ROWS_SHOWN = 5
EMPTY_TEXT = ("drop", "error")
TEXT_DTYPES = ("string", "large_string", "null")  # "null": every value missing (the empty-text check says so)


def _join(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _noun(singular: str, count: int) -> str:
    return singular if count == 1 else f"{singular}s"


@dataclass(frozen=True)
class RowNumbering:
    """How the rows of one split are numbered in messages (see the module docstring).

    ``files`` are the local files the split was read from, in order (none: a Hub or in-memory
    dataset); ``builder`` is the ``datasets`` builder that read them (csv, json, text, parquet).
    """

    files: tuple[str, ...] = ()
    builder: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    #: Per file, the line each record starts on, for readers of formats ``datasets`` has no builder for
    #: (CoNLL: a record is a sentence of several lines); such records are named ``sentences at lines ...``.
    record_lines: tuple[tuple[int, ...], ...] = ()

    def describe(self, rows: Sequence[int], total: int | None = None) -> str:
        """``rows`` (positions in the split as loaded, from 0) as the user's file numbers them,
        e.g. ``data rows 4, 9 (file lines 5, 10)``: the first few, then how many more of ``total``."""
        shown = sorted(rows)[:MAX_ROWS_SHOWN]
        total = len(rows) if total is None else total
        more = f" and {total - len(shown)} more" if total > len(shown) else ""
        located = self._locate(shown) if self.files else None
        if located is None:
            return f"{_noun('row', len(shown))} at index {_join(shown)}{more}"
        per_file: dict[str, list[tuple[int, int | None]]] = {}
        for file, record, line in located:
            per_file.setdefault(file, []).append((record, line))
        parts = [self._describe_file(found) + (f" of {file}" if len(self.files) > 1 else "")
                 for file, found in per_file.items()]
        return "; ".join(parts) + more

    def _describe_file(self, found: list[tuple[int, int | None]]) -> str:
        records, lines = [r for r, _ in found], [line for _, line in found]
        if self.record_lines:
            return f"{_noun('sentence', len(lines))} at {_noun('line', len(lines))} {_join(lines)}"
        if self.builder == "csv":
            return (f"data {_noun('row', len(records))} {_join(records)} "
                    f"(file {_noun('line', len(lines))} {_join(lines)})")
        if None not in lines:
            return f"{_noun('line', len(lines))} {_join(lines)}"
        return f"{_noun('record', len(records))} {_join(records)}"

    def _locate(self, rows: Sequence[int]) -> list[tuple[str, int, int | None]] | None:
        """(file, record from 1, file line or None) of each of the sorted ``rows``; None when the
        files no longer hold that many records."""
        located: list[tuple[str, int, int | None]] = []
        pending = list(rows)
        offset = 0  # records in the files before this one
        for index, file in enumerate(self.files):
            count = 0
            starts = self.record_lines[index] if self.record_lines else self._record_lines(Path(file))
            for count, line in enumerate(starts, start=1):
                while pending and pending[0] == offset + count - 1:
                    located.append((file, count, line))
                    pending.pop(0)
                if not pending:
                    return located
            offset += count
        return None

    def _record_lines(self, path: Path) -> Iterator[int | None]:
        """The file line where each record of ``path`` starts (None where lines do not apply)."""
        if self.builder == "parquet":
            import pyarrow.parquet as pq

            yield from [None] * pq.ParquetFile(path).metadata.num_rows
            return
        with path.open(encoding=self.encoding, errors="replace", newline="" if self.builder == "csv" else None) as f:
            if self.builder == "csv":
                yield from _csv_record_lines(f, self.delimiter)
            elif self.builder == "text":
                yield from (n for n, _ in enumerate(f, start=1))
            elif path.suffix == ".jsonl" or f.read(1_000).lstrip().startswith("{"):
                f.seek(0)
                yield from (n for n, line in enumerate(f, start=1) if line.strip())
            else:  # one JSON document: an array of records
                f.seek(0)
                records = json.load(f)
                yield from [None] * (len(records) if isinstance(records, list) else 0)


def _csv_record_lines(f: Any, delimiter: str) -> Iterator[int]:
    """Start lines of the data rows of a csv file, skipping blank lines and the header as pandas does."""
    reader = csv.reader(f, delimiter=delimiter)
    end = 0  # the line the previous record ended on
    header_seen = False
    for record in reader:
        start, end = end + 1, reader.line_num
        if not record:  # a blank line
            continue
        if header_seen:
            yield start
        header_seen = True


def number_rows(ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` with the hidden ``ROW`` column: each row's position as loaded, for messages."""
    return ds if ROW in ds.column_names else ds.add_column(ROW, np.arange(len(ds), dtype=np.int64))


def describe_rows(ds: datasets.Dataset, positions: Sequence[int], numbering: RowNumbering) -> str:
    """The rows at ``positions`` of ``ds`` (a split being validated, maybe after rows were dropped)
    as numbered in the user's file."""
    shown = sorted(positions)[:MAX_ROWS_SHOWN]
    rows = ds.select(shown)[ROW] if ROW in ds.column_names else shown
    return numbering.describe(rows, total=len(positions))


def visible_columns(ds: datasets.Dataset) -> list[str]:
    """The columns of the user's data (without the hidden ``ROW``)."""
    return [c for c in ds.column_names if c != ROW]


def require_columns(ds: datasets.Dataset, columns: Mapping[str, str], split: str, where: str) -> None:
    """Each ``{config key: column}`` must be in ``ds``; the error lists the columns found."""
    for key, column in columns.items():
        if column not in ds.column_names:
            raise DataError(
                f"column '{column}' (task.data.{key}) not found in split '{split}' of {where}; "
                f"columns found: {visible_columns(ds)}"
            )


def require_text(ds: datasets.Dataset, columns: Mapping[str, str], split: str, where: str) -> None:
    """Each ``{config key: column}`` must hold text, not e.g. numbers (an id or label column named by mistake)."""
    for key, column in columns.items():
        feature = ds.features[column]
        if isinstance(feature, datasets.Value) and feature.dtype in TEXT_DTYPES:
            continue
        kind = f"numbers ({feature.dtype})" if isinstance(feature, datasets.Value) else str(feature)
        found = {c: getattr(f, "dtype", type(f).__name__) for c, f in ds.features.items() if c != ROW}
        raise DataError(
            f"column '{column}' (task.data.{key}) of split '{split}' in {where} holds {kind}, not text "
            f"(e.g. {ds[0][column]!r}): set task.data.{key} to the text column; columns found: {found}"
        )


def check_empty_text_policy(policy: str) -> None:
    if policy not in EMPTY_TEXT:
        raise ConfigError(f"task.data.empty_text must be one of {list(EMPTY_TEXT)}, got {policy!r}")


def blank(value: Any) -> bool:
    """Missing or only whitespace."""
    return value is None or not str(value).strip()


def empty_rows(ds: datasets.Dataset, columns: Sequence[str]) -> list[int]:
    """Positions of the rows where any of ``columns`` is blank."""
    values = zip(*(ds[c] for c in columns), strict=True)
    return [i for i, row in enumerate(values) if any(blank(v) for v in row)]


def drop_empty(ds: datasets.Dataset, empty: Sequence[int], policy: str, what: str, split: str, where: str,
               numbering: RowNumbering) -> datasets.Dataset:
    """``task.data.empty_text``: ``error`` stops at the ``empty`` rows, ``drop`` removes them with a warning;
    both name the rows. ``what`` says what is empty, e.g. ``empty text``."""
    if not empty:
        return ds
    rows = describe_rows(ds, empty, numbering)
    if policy == "error":
        raise DataError(f"{len(empty)} rows with {what} in split '{split}' of {where}: {rows} "
                        f"(set task.data.empty_text=drop to skip them)")
    log.warning("dropped %d rows with %s from split '%s' (%s): %s", len(empty), what, split, where, rows)
    gone = set(empty)
    return ds.select([i for i in range(len(ds)) if i not in gone])


def check_texts(ds: datasets.Dataset, text: Mapping[str, str], split: str, where: str, policy: str,
                numbering: RowNumbering, others: Mapping[str, str] | None = None,
                what: str = "empty text") -> datasets.Dataset:
    """The check every family runs first: the ``text`` columns (``{config key: column}``) and the
    ``others`` (labels, answers, ...) exist, the text columns hold text, and rows where any text is
    blank follow ``policy`` (``task.data.empty_text``: drop with a warning, or an error naming them)."""
    require_columns(ds, {**text, **(others or {})}, split, where)
    require_text(ds, text, split, where)
    return drop_empty(ds, empty_rows(ds, list(text.values())), policy, what, split, where, numbering)


def require_fast_tokenizer(tokenizer: Any, family: str, needs: str) -> None:
    """A ConfigError unless ``tokenizer`` is a fast (Rust) one, which ``family`` needs for ``needs``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"{family} needs a fast tokenizer ({needs}); {type(tokenizer).__name__} is not one: point "
            "model.tokenizer at a model with a tokenizer.json"
        )


def refuse_unknown_keys(cfg: Mapping[str, Any], known: Iterable[str], at: str) -> None:
    """A ConfigError naming the first key of the config block ``at`` that is not one of ``known``."""
    known = list(known)
    for name in cfg:
        if name not in known:
            raise ConfigError(f"{at}.{name} is not a setting; {at} takes {', '.join(known)}")
