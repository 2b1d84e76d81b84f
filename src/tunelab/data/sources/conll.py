"""CoNLL column files: one token per line with its tag in a column, a blank line between sentences.

    EU      B-ORG
    rejects O
    German  B-MISC

The CoNLL-2003 layout (``token POS chunk tag``, ``-DOCSTART-`` lines between documents), WNUT's
(``token tag``) and most NER corpora use it. Each sentence becomes a row with ``tokens`` and ``tags``
lists; rows are named in messages by the line their sentence starts on. A file with only a token
column (nothing to score) gives rows without ``tags``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from tunelab.data.checks import RowNumbering
from tunelab.data.sources import Source, _as_mapping, check_decodable
from tunelab.errors import DataError

DOCSTART = "-DOCSTART-"
SEQUENCE = datasets.Sequence(datasets.Value("string"))


def _field(fields: list[str], column: int) -> str | None:
    try:
        return fields[column]
    except IndexError:
        return None


def read_conll(path: Path, token_column: int = 0, tag_column: int | None = -1, delimiter: str | None = None,
               encoding: str = "utf-8", split: str = "train") -> tuple[dict[str, list], list[int]]:
    """``{"tokens": [...], "tags": [...]}`` per sentence of ``path`` and the line each starts on.
    ``tag_column=None``, or a file whose lines all hold one field, reads tokens only."""
    check_decodable(path, encoding)
    sentences: list[list[list[str]]] = []
    starts: list[int] = []
    current: list[list[str]] = []
    for number, line in enumerate(path.read_text(encoding=encoding).splitlines(), start=1):
        fields = line.split(delimiter) if delimiter else line.split()
        if not fields or not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        if fields[0] == DOCSTART:
            continue
        if not current:
            starts.append(number)
        current.append([*fields, str(number)])
    if current:
        sentences.append(current)
    if not sentences:
        raise DataError(f"{path}: no sentences found (task.data.source.data_files.{split}); a CoNLL file has one "
                        "token per line and a blank line between sentences")
    with_tags = tag_column is not None and any(len(f) > 2 for s in sentences for f in s)
    rows: dict[str, list] = {"tokens": [], **({"tags": []} if with_tags else {})}
    for sentence in sentences:
        tokens, tags = [], []
        for *fields, number in sentence:
            token = _field(fields, token_column)
            tag = _field(fields, tag_column) if with_tags else ""
            if token is None or tag is None or (with_tags and len(fields) < 2):
                raise DataError(
                    f"{path}: line {number} has {len(fields)} field(s) ({' '.join(fields)!r}); a CoNLL line needs the "
                    f"token (task.data.source.token_column={token_column}) and the tag "
                    f"(task.data.source.tag_column={tag_column}), separated by "
                    f"{'whitespace' if delimiter is None else repr(delimiter)} (task.data.source.delimiter)"
                )
            tokens.append(token)
            tags.append(tag)
        rows["tokens"].append(tokens)
        if with_tags:
            rows["tags"].append(tags)
    return rows, starts


def conll(data_files: str | Sequence[str] | Mapping[str, Any], token_column: int = 0, tag_column: int | None = -1,
          delimiter: str | None = None, encoding: str = "utf-8") -> Source:
    """CoNLL files per split (``data_files`` as for ``tunelab.data.sources.load``).

    Args:
        token_column, tag_column: field positions (from 0; negative from the end: CoNLL-2003's NER tag
            is the last of ``token POS chunk tag``). ``tag_column=None``: tokens only.
        delimiter: field separator; ``None`` splits on any whitespace (tabs or spaces).
    """
    splits, origin, numbering = {}, {}, {}
    for split, paths in _as_mapping(data_files).items():
        columns: dict[str, list] = {}
        lines: list[tuple[int, ...]] = []
        for p in paths:
            if not Path(p).is_file():
                raise DataError(f"data file for split '{split}' not found: {p} (task.data.source.data_files.{split})")
            rows, starts = read_conll(Path(p), token_column, tag_column, delimiter, encoding, split)
            if columns and set(rows) != set(columns):
                raise DataError(f"{p}: has {'no ' if 'tags' not in rows else ''}tag column unlike the other files of "
                                f"split '{split}' ({', '.join(paths)})")
            for key, values in rows.items():
                columns.setdefault(key, []).extend(values)
            lines.append(tuple(starts))
        features = datasets.Features({key: SEQUENCE for key in columns})
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
        origin[split] = ", ".join(paths)
        numbering[split] = RowNumbering(tuple(paths), "conll", encoding=encoding, record_lines=tuple(lines))
    return Source(datasets.DatasetDict(splits), origin, numbering)
