"""Data-quality checks every task family runs on its loaded splits, before tokenisation (``task.data.quality``).

- Normalisation of the text fields (``nfkc``, ``strip_html``, ``strip_urls``, ``strip_mentions``,
  ``whitespace``, applied in that order), each counted: rows it changed, per split.
- ``missing``: rows whose text or label/target is missing or blank.
- ``duplicates``: rows repeating an earlier row of their split (after normalisation); duplicates that
  disagree on the label/target are reported separately.
- ``near_duplicates``: rows whose word shingles (MinHash + LSH, ``datasketch``) have an estimated Jaccard
  similarity of at least ``threshold`` with an earlier, not identical, row of their split.
- ``overlap``: rows of a held-out split (validation, test) with an exact or near copy in an earlier split.
  ``auto``: warn for the splits the source provides; between train and a split carved from it by whole
  groups of duplicates (or two such splits), an exact copy is an error (carving keeps exact duplicates together, so it cannot create
  one) and a near copy a warning.
- ``min_class_count``: classes with fewer than ``count`` test examples; per-class counts per split.

Each check has a policy: ``off``, ``warn`` (log and keep), ``drop`` (keep the first occurrence of a split;
for overlap, drop the earlier split's copies: from train, never from a test split) or ``error`` (a
``DataError``). Messages name the rows as the user's file numbers them (``tunelab.data.checks``).
The counts are reported to ``metrics.json`` as ``data/<split>/<count>`` (``QualityReport.metrics``).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import datasets

from tunelab.data.checks import MAX_ROWS_SHOWN, ROW, RowNumbering, refuse_unknown_keys
from tunelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KEY = "task.data.quality"
POLICIES = ("off", "warn", "drop", "error")
SPLIT_ORDER = ("train", "validation", "test")
#: How a split was carved from train: whole groups of exact duplicates, rows (the duplicates check is off),
#: or rows because train had too few distinct rows to hold out whole groups.
CARVING = {
    "grouped": "which keeps exact duplicates together: this is a bug, please report it",
    "rows": f"by rows as {KEY}.duplicates=off, so copies of a row can land on both sides: with duplicates=warn "
            "carving keeps them together",
    "too few groups": "by rows, train having too few distinct rows to hold out whole groups of duplicates",
}

_HTML_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")

#: Normalisation options in the order they apply, each a ``str -> str``.
NORMALISERS: dict[str, Callable[[str], str]] = {
    "nfkc": lambda t: unicodedata.normalize("NFKC", t),
    "strip_html": lambda t: html.unescape(_HTML_TAG.sub(" ", t)),
    "strip_urls": lambda t: _URL.sub(" ", t),
    "strip_mentions": lambda t: _MENTION.sub(" ", t),
    "whitespace": lambda t: _WHITESPACE.sub(" ", t).strip(),
}


@dataclass(frozen=True)
class NearDuplicates:
    """``task.data.quality.near_duplicates``: MinHash over word shingles, LSH for candidates."""

    policy: str = "warn"
    threshold: float = 0.9
    num_perm: int = 128
    shingle: int = 3


@dataclass(frozen=True)
class MinClassCount:
    """``task.data.quality.min_class_count``: a test split with fewer than ``count`` examples of a class."""

    policy: str = "warn"
    count: int = 10


@dataclass(frozen=True)
class QualityConfig:
    """``task.data.quality``; see the module docstring."""

    nfkc: bool = False
    whitespace: bool = False  # configs/task/_base/quality.yaml turns it on where the layout is not content
    strip_html: bool = False
    strip_urls: bool = False
    strip_mentions: bool = False
    missing: str = "warn"
    duplicates: str = "warn"
    near_duplicates: NearDuplicates = field(default_factory=NearDuplicates)
    overlap: str = "auto"
    min_class_count: MinClassCount = field(default_factory=MinClassCount)

    @classmethod
    def parse(cls, cfg: Mapping[str, Any] | None) -> QualityConfig:
        """The config from the yaml block; a ConfigError naming the key for an unknown key or a bad value."""
        cfg = dict(cfg or {})
        known = {f.name: f for f in fields(cls)}
        refuse_unknown_keys(cfg, known, KEY)
        out = cls()
        for name, value in cfg.items():
            at = f"{KEY}.{name}"
            if name in NORMALISERS:
                if not isinstance(value, bool):
                    raise ConfigError(f"{at} must be true or false, got {value!r}")
            elif name in ("near_duplicates", "min_class_count"):
                kind = NearDuplicates if name == "near_duplicates" else MinClassCount
                value = _parse_block(kind, value, at)
            else:
                allowed = (*POLICIES, "auto") if name == "overlap" else POLICIES
                value = _check_policy(value, at, allowed)
            out = replace(out, **{name: value})
        return out

    @property
    def normalisers(self) -> list[str]:
        return [name for name in NORMALISERS if getattr(self, name)]

    @property
    def near(self) -> bool:
        return self.near_duplicates.policy != "off"


def _check_policy(value: Any, at: str, allowed: Sequence[str]) -> str:
    """The policy, ``off`` for YAML's reading of a bare ``off`` (false); a ConfigError naming ``at`` otherwise."""
    if value is False:
        value = "off"
    if value not in allowed:
        raise ConfigError(f"{at} must be one of {list(allowed)}, got {value!r}")
    return value


def _parse_block(kind: type, value: Any, at: str) -> Any:
    if isinstance(value, str | bool):  # the policy alone, e.g. near_duplicates=drop
        value = {"policy": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at} must be a policy or a mapping of {[f.name for f in fields(kind)]}, got {value!r}")
    value = dict(value)
    refuse_unknown_keys(value, {f.name: f for f in fields(kind)}, at)
    if value.get("policy") is False:
        value["policy"] = "off"
    _check_policy(value.get("policy", "warn"), f"{at}.policy",
                  [p for p in POLICIES if p != "drop"] if kind is MinClassCount else POLICIES)
    block = kind(**value)
    if kind is NearDuplicates:
        if not (isinstance(block.threshold, int | float) and 0 < block.threshold <= 1):
            raise ConfigError(f"{at}.threshold must be a number in (0, 1], got {block.threshold!r}")
        for name, low in (("num_perm", 16), ("shingle", 1)):
            number = getattr(block, name)
            if not isinstance(number, int) or isinstance(number, bool) or number < low:
                raise ConfigError(f"{at}.{name} must be a whole number of at least {low}, got {number!r}")
    elif not isinstance(block.count, int) or isinstance(block.count, bool) or block.count < 1:
        raise ConfigError(f"{at}.count must be a whole number of at least 1, got {block.count!r}")
    return block


@dataclass(frozen=True)
class Fields:
    """The columns a family reads: ``text`` (normalised and compared) and ``target`` (labels, targets)."""

    text: tuple[str, ...]
    target: tuple[str, ...] = ()


def missing(value: Any) -> bool:
    """None, NaN, blank text or an empty list/mapping."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    return False


def _key(values: Sequence[Any]) -> str:
    return "\x1f".join(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for v in values)


def _snippet(text: str, width: int = 60) -> str:
    text = text.replace("\x1f", " | ")
    return repr(text if len(text) <= width else text[: width - 1] + "…")


@dataclass
class SplitView:
    """One split under check: its rows, where it came from, how its rows are numbered."""

    name: str
    ds: datasets.Dataset
    where: str
    numbering: RowNumbering
    carved: str | None = None  #: how it was carved from train (``CARVING``); None: the source's split

    def row(self, position: int) -> str:
        """The row at ``position`` as the user's file numbers it (and which split's file it is in)."""
        return self.numbering.describe([self.ds[position][ROW]])

    def rows(self, positions: Sequence[int]) -> str:
        shown = sorted(positions)[:MAX_ROWS_SHOWN]
        return self.numbering.describe(self.ds.select(shown)[ROW], total=len(positions))


class QualityReport:
    """Runs the checks of one ``QualityConfig`` and keeps their counts, per split."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self.counts: dict[str, dict[str, int]] = defaultdict(dict)

    def metrics(self) -> dict[str, dict[str, int]]:
        """``{"data/<split>": {count: n}}``: sections of ``metrics.json`` (flattened ``data/train/duplicates``)."""
        return {f"data/{split}": dict(counts) for split, counts in self.counts.items()}

    def _add(self, split: str, name: str, n: int) -> None:
        self.counts[split][name] = self.counts[split].get(name, 0) + n

    # --- per split, before validation ---------------------------------------------------------
    def normalise(self, ds: datasets.Dataset, split: str, fields_: Fields) -> datasets.Dataset:
        """Apply the normalisation options to the text columns (strings only); count the rows each changed."""
        columns = [c for c in fields_.text if c in ds.column_names and _is_text(ds.features[c])]
        changed: dict[str, set[int]] = {name: set() for name in self.config.normalisers}
        for column in columns:
            values = _values(ds, column)
            out = list(values)
            for name in self.config.normalisers:
                fn = NORMALISERS[name]
                for i, v in enumerate(out):
                    if isinstance(v, str):
                        new = fn(v)
                        if new != v:
                            out[i] = new
                            changed[name].add(i)
            if out != values:
                feature, order = ds.features[column], ds.column_names
                ds = ds.remove_columns(column).add_column(column, out, feature=feature).select_columns(order)
        for name, rows in changed.items():
            self._add(split, f"normalised/{name}", len(rows))
            if rows:
                log.info("%s.%s changed %d rows of split '%s'", KEY, name, len(rows), split)
        return ds

    def check_missing(self, view: SplitView, fields_: Fields) -> datasets.Dataset:
        """Rows with a missing text or label/target (``missing``: counted, then the policy)."""
        policy = self.config.missing
        columns = [c for c in (*fields_.text, *fields_.target) if c in view.ds.column_names]
        if policy == "off" or not columns:
            return view.ds
        found: dict[str, list[int]] = {}
        for column in columns:
            found[column] = [i for i, v in enumerate(_values(view.ds, column)) if missing(v)]
        rows = sorted({i for positions in found.values() for i in positions})
        self._add(view.name, "missing", len(rows))
        if not rows:
            return view.ds
        detail = "; ".join(f"'{c}' in {view.rows(p)}" for c, p in found.items() if p)
        message = (f"{KEY}.missing: {len(rows)} rows of split '{view.name}' ({view.where}) have a missing or blank "
                   f"value: {detail}")
        return self._apply(view, rows, policy, message, "missing")

    # --- across the splits, after carving -----------------------------------------------------
    def group_ids(self, ds: datasets.Dataset, fields_: Fields) -> list[int] | None:
        """Per row, the id of its exact-duplicate group (the text fields after normalisation); None
        when every row is unique, or when the duplicates check is off."""
        if self.config.duplicates == "off":
            return None
        keys = _keys(ds, fields_)
        ids: dict[str, int] = {}
        groups = [ids.setdefault(k, len(ids)) for k in keys]
        return groups if len(ids) < len(groups) else None

    def check_splits(self, splits: dict[str, SplitView], fields_: Fields) -> dict[str, datasets.Dataset]:
        """Exact and near duplicates within each split, then overlap between splits; returns the splits
        after the ``drop`` policies."""
        names = sorted(splits, key=_split_rank)
        keys = {s: _keys(splits[s].ds, fields_) for s in names}
        near = _NearIndex(self.config.near_duplicates, {s: keys[s] for s in names}) if self.config.near else None
        drops: dict[str, set[int]] = {s: set() for s in names}
        for s in names:
            drops[s] |= self._within(splits[s], keys[s], near, fields_)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                self._overlap(splits[a], splits[b], keys, near, drops)
        out = {}
        for s in names:
            ds = splits[s].ds
            if drops[s]:
                ds = ds.select([i for i in range(len(ds)) if i not in drops[s]])
            self._add(s, "dropped", 0)
            out[s] = ds
        return out

    def _within(self, view: SplitView, keys: list[str], near: _NearIndex | None, fields_: Fields) -> set[int]:
        first: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []  # (row, the earlier row it repeats)
        for i, k in enumerate(keys):
            if k in first:
                repeats.append((i, first[k]))
            else:
                first[k] = i
        self._add(view.name, "duplicates", len(repeats))
        self._conflicts(view, keys, repeats, fields_)
        drop: set[int] = set()
        policy = self.config.duplicates
        if repeats and policy != "off":
            examples = "; ".join(f"{view.row(i)} repeats {view.row(j)} {_snippet(keys[i])}"
                                 for i, j in repeats[:MAX_ROWS_SHOWN])
            message = (f"{KEY}.duplicates: {len(repeats)} rows of split '{view.name}' ({view.where}) repeat an earlier "
                       f"row (after normalisation): {view.rows([i for i, _ in repeats])}; e.g. {examples}")
            drop |= self._decide(view, [i for i, _ in repeats], policy, message, "duplicates")
        if near is None:
            return drop
        close = near.within(view.name, keys)
        self._add(view.name, "near_duplicates", len(close))
        if close:
            examples = "; ".join(f"{view.row(i)} ~ {view.row(j)} ({sim:.2f}): {_snippet(keys[i])} ~ {_snippet(keys[j])}"
                                 for i, j, sim in close[:MAX_ROWS_SHOWN])
            message = (f"{KEY}.near_duplicates: {len(close)} rows of split '{view.name}' ({view.where}) nearly repeat an "
                       f"earlier row (estimated Jaccard >= {self.config.near_duplicates.threshold} over "
                       f"{self.config.near_duplicates.shingle}-word shingles): {view.rows([i for i, _, _ in close])}; "
                       f"e.g. {examples}")
            drop |= self._decide(view, [i for i, _, _ in close if i not in drop], self.config.near_duplicates.policy,
                                 message, "near_duplicates")
        return drop

    def _conflicts(self, view: SplitView, keys: list[str], repeats: list[tuple[int, int]], fields_: Fields) -> None:
        targets = [c for c in fields_.target if c in view.ds.column_names]
        if not targets or not repeats:
            self._add(view.name, "conflicting_duplicates", 0)
            return
        values = [_key(row) for row in zip(*(_values(view.ds, c) for c in targets), strict=True)]
        members: dict[int, list[int]] = defaultdict(list)
        for i, j in repeats:
            members[j].append(i)
        conflicting = [[j, *rows] for j, rows in members.items() if len({values[r] for r in [j, *rows]}) > 1]
        self._add(view.name, "conflicting_duplicates", len(conflicting))
        if conflicting:
            examples = "; ".join(f"{view.rows(group)} with {sorted({values[r] for r in group})}"
                                 for group in conflicting[:MAX_ROWS_SHOWN])
            log.warning("%s.duplicates: %d groups of identical rows in split '%s' (%s) disagree on %s: e.g. %s",
                        KEY, len(conflicting), view.name, view.where, ", ".join(targets), examples)

    def _overlap(self, a: SplitView, b: SplitView, keys: Mapping[str, list[str]], near: _NearIndex | None,
                 drops: dict[str, set[int]]) -> None:
        """Rows of ``b`` (the later split) with an exact or near copy in ``a``, among rows not already dropped."""
        first_a: dict[str, int] = {}
        for i, k in enumerate(keys[a.name]):
            if i not in drops[a.name]:
                first_a.setdefault(k, i)
        exact = [(i, first_a[k]) for i, k in enumerate(keys[b.name]) if i not in drops[b.name] and k in first_a]
        self._add(b.name, f"overlap/{a.name}", len(exact))
        found = [("exact", exact)]
        if near is not None:
            close = [(i, j) for i, j, _ in near.across(b.name, a.name, keys)
                     if i not in drops[b.name] and j not in drops[a.name]]
            self._add(b.name, f"near_overlap/{a.name}", len(close))
            found.append(("near", close))
        for kind, pairs in found:
            if not pairs:
                continue
            # both from train's rows (train and a split carved from it, or two carved splits): carving made the copy
            carved = [v for v in (a, b) if v.carved] if all(v.name == "train" or v.carved for v in (a, b)) else []
            policy = self.config.overlap
            if policy == "auto":
                policy = "error" if kind == "exact" and "grouped" in {v.carved for v in carved} else "warn"
            if policy == "off":
                continue
            examples = "; ".join(f"{b.name} {b.row(i)} ~ {a.name} {a.row(j)}: {_snippet(keys[b.name][i])}"
                                 for i, j in pairs[:MAX_ROWS_SHOWN])
            message = (f"{KEY}.overlap: {len(pairs)} rows of split '{b.name}' ({b.where}) have {'an exact' if kind == 'exact' else 'a near'} "
                       f"copy in split '{a.name}' ({a.where}): {b.name} {b.rows([i for i, _ in pairs])}; "
                       f"{a.name} {a.rows(sorted({j for _, j in pairs}))}; e.g. {examples}")
            if carved and kind == "exact":
                message += f" (split '{carved[-1].name}' was carved from train {CARVING[carved[-1].carved]})"
            if policy == "drop":
                if a.name.startswith("test"):
                    log.warning("%s (both are test splits: %s.overlap=drop drops from neither)", message, KEY)
                    continue
                # every copy in the earlier split: the exact copies, or each matched row
                copied = {keys[b.name][i] for i, _ in pairs}
                copies = {j for j, k in enumerate(keys[a.name]) if k in copied} if kind == "exact" else {j for _, j in pairs}
                copies -= drops[a.name]
                drops[a.name] |= copies
                self._add(a.name, "dropped", len(copies))
                log.warning("%s: dropped %d rows from split '%s'", message, len(copies), a.name)
            else:
                self._decide(b, [], policy, message, "overlap")

    def class_counts(self, splits: Mapping[str, datasets.Dataset], column: str | None) -> None:
        """Per-class counts per split (a ClassLabel ``column``), logged and counted; ``min_class_count`` on test splits."""
        check = self.config.min_class_count
        for split in sorted(splits, key=_split_rank):
            ds = splits[split]
            feature = ds.features.get(column) if column else None
            if not isinstance(feature, datasets.ClassLabel):
                continue
            counts = dict.fromkeys(feature.names, 0)
            for v in _values(ds, column):
                if 0 <= v < len(feature.names):
                    counts[feature.names[v]] += 1
            for name, n in counts.items():
                self._add(split, f"class/{name}", n)
            log.info("data: split '%s' per class: %s", split, ", ".join(f"{k} {v}" for k, v in counts.items()))
            few = {k: v for k, v in counts.items() if v < check.count}
            if split.startswith("test") and few and check.policy != "off":
                message = (f"{KEY}.min_class_count: split '{split}' has fewer than {check.count} examples of "
                           f"{len(few)} classes: {', '.join(f'{k} {v}' for k, v in few.items())}; its per-class "
                           f"metrics rest on few examples")
                if check.policy == "error":
                    raise DataError(message)
                log.warning(message)

    # --- policies -----------------------------------------------------------------------------
    def _decide(self, view: SplitView, rows: list[int], policy: str, message: str, check: str) -> set[int]:
        """``error`` raises, ``warn`` logs; ``drop`` logs and returns ``rows`` (counted as dropped)."""
        if policy == "error":
            raise DataError(f"{message} (set {KEY}.{check}=warn or drop to go on)")
        if policy == "drop" and rows:
            self._add(view.name, "dropped", len(rows))
            log.warning("%s: dropped %d rows from split '%s', keeping the first of each", message, len(rows), view.name)
            return set(rows)
        log.warning(message)
        return set()

    def _apply(self, view: SplitView, rows: list[int], policy: str, message: str, check: str) -> datasets.Dataset:
        gone = self._decide(view, rows, policy, message, check)
        return view.ds.select([i for i in range(len(view.ds)) if i not in gone]) if gone else view.ds


def _values(ds: datasets.Dataset, column: str) -> list[Any]:
    """A column as a list, in one read (iterating ``ds[column]`` reads row by row)."""
    return ds.select_columns([column]).to_dict()[column]


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _keys(ds: datasets.Dataset, fields_: Fields) -> list[str]:
    """Per row, its text fields as one string (what duplicates compare)."""
    columns = [c for c in fields_.text if c in ds.column_names]
    if not columns:
        return [str(i) for i in range(len(ds))]  # nothing to compare: every row unique
    return [_key(row) for row in zip(*(_values(ds, c) for c in columns), strict=True)]


class _NearIndex:
    """MinHash signatures (``datasketch``) of the distinct texts of all splits in one LSH index: a text repeated
    many times is hashed and compared once; a text without words has no signature (nothing to compare)."""

    def __init__(self, config: NearDuplicates, keys: Mapping[str, list[str]]):
        from datasketch import MinHash, MinHashLSH

        self.threshold = config.threshold
        distinct = list(dict.fromkeys(k for texts in keys.values() for k in texts))
        ids = {k: i for i, k in enumerate(distinct)}
        #: per split, per distinct text: its rows, in order
        self.rows: dict[str, dict[int, list[int]]] = {}
        for split, texts in keys.items():
            rows: dict[int, list[int]] = defaultdict(list)
            for i, k in enumerate(texts):
                rows[ids[k]].append(i)
            self.rows[split] = rows
        self.ids = {split: [ids[k] for k in texts] for split, texts in keys.items()}
        shingles = [_shingles(k, config.shingle) for k in distinct]
        worded = [i for i, sh in enumerate(shingles) if sh]
        self.hashes = dict(zip(worded, MinHash.bulk([shingles[i] for i in worded], num_perm=config.num_perm), strict=True))
        self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        with self.lsh.insertion_session() as session:
            for i, m in self.hashes.items():
                session.insert(i, m, check_duplication=False)
        self._similar: dict[int, list[tuple[int, float]]] = {}

    def similar(self, text: int) -> list[tuple[int, float]]:
        """(other distinct text, similarity) at or above the threshold."""
        if text not in self._similar:
            m = self.hashes.get(text)
            found = [] if m is None else [(j, m.jaccard(self.hashes[j])) for j in self.lsh.query(m) if j != text]
            self._similar[text] = [(j, sim) for j, sim in found if sim >= self.threshold]
        return self._similar[text]

    def within(self, split: str, keys: list[str]) -> list[tuple[int, int, float]]:
        """(row, earliest similar earlier row, similarity) for rows close to an earlier, not identical row."""
        out, rows = [], self.rows[split]
        for i, text in enumerate(self.ids[split]):
            earlier = [(rows[j][0], sim) for j, sim in self.similar(text) if j in rows and rows[j][0] < i]
            if earlier:
                j, sim = min(earlier)
                out.append((i, j, sim))
        return out

    def across(self, split: str, other: str, keys: Mapping[str, list[str]]) -> list[tuple[int, int, float]]:
        """(row of ``split``, row of ``other``, similarity): near (not exact) copies."""
        out, rows = [], self.rows[other]
        for i, text in enumerate(self.ids[split]):
            close = [(rows[j][0], sim) for j, sim in self.similar(text) if j in rows]
            if close:
                j, sim = min(close)
                out.append((i, j, sim))
        return out


def _shingles(text: str, size: int) -> list[bytes]:
    words = _WORD.findall(text.lower())
    if not words:
        return []
    if len(words) <= size:
        return [" ".join(words).encode()]
    return list({" ".join(words[k:k + size]).encode() for k in range(len(words) - size + 1)})
