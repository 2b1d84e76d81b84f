"""The training subsets of few-shot runs and data-size curves (``task.data.few_shot``, ``task.data.train_fraction``).

- ``few_shot.k``: k examples per class drawn from train (the family's label column, ``stratify_column``), with
  ``few_shot.seed`` (null: ``task.data.data_seed``). The draw depends on the data and that seed only, so every
  method and training seed of a sweep sees the same k-shot set; ``few_shot.validation``: ``kshot`` draws k per
  class from validation too (the honest few-shot protocol: no large labelled set to select on), ``full`` keeps
  it whole. Test is never subsampled.
- ``train_fraction``: a seeded share of the training rows, for any family (the same seed rule).

Both are drawn after carving and the data-quality checks, so held-out splits are the same as without them.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from tunelab.data.checks import refuse_unknown_keys
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

VALIDATION = ("kshot", "full")


@dataclass(frozen=True)
class Subsets:
    """``task.data.few_shot`` (``k``, ``seed``, ``validation``) and ``task.data.train_fraction``."""

    k: int | None = None
    seed: int | None = None
    validation: str = "kshot"
    train_fraction: float | None = None

    @classmethod
    def parse(cls, few_shot: Mapping[str, Any] | None, train_fraction: object) -> Subsets:
        """The settings, or a ConfigError naming the key."""
        few_shot = dict(few_shot or {})
        refuse_unknown_keys(few_shot, ("k", "seed", "validation"), "task.data.few_shot")
        k, seed, validation = few_shot.get("k"), few_shot.get("seed"), few_shot.get("validation", "kshot")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"task.data.few_shot.k must be null (off) or a whole number >= 1 (examples per class), got {k!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"task.data.few_shot.seed must be null (task.data.data_seed) or a whole number, got {seed!r}")
        if validation not in VALIDATION:
            raise ConfigError(f"task.data.few_shot.validation must be kshot or full, got {validation!r}")
        if train_fraction is not None and (isinstance(train_fraction, bool) or not isinstance(train_fraction, int | float)
                                           or not 0 < train_fraction <= 1):
            raise ConfigError(f"task.data.train_fraction must be null (off) or a number in (0, 1], got {train_fraction!r}")
        if k is not None and train_fraction is not None:
            raise ConfigError("task.data.few_shot.k and task.data.train_fraction both subsample train: set one of them")
        return cls(k, seed, validation, None if train_fraction is None else float(train_fraction))

    @property
    def active(self) -> bool:
        return self.k is not None or self.train_fraction is not None

    def draw(self, splits: dict[str, datasets.Dataset], label_column: str | None, data_seed: int) -> dict[str, datasets.Dataset]:
        """``splits`` with train (and, for k-shot with ``validation: kshot``, validation) subsampled."""
        if not self.active:
            return splits
        seed = data_seed if self.seed is None else self.seed
        out = dict(splits)
        if self.train_fraction is not None:
            n = max(1, math.floor(self.train_fraction * len(splits["train"])))
            out["train"] = splits["train"].select(sorted(np.random.default_rng(seed).permutation(len(splits["train"]))[:n]))
            log.info("task.data.train_fraction=%g: %d of %d training rows (seed %d)", self.train_fraction, n,
                     len(splits["train"]), seed)
            return out
        if label_column is None:
            raise ConfigError("task.data.few_shot.k draws k examples per class, and this task family has no class "
                              "label column (task.data.stratify_column); use task.data.train_fraction instead")
        names = ["train"] + (["validation"] if self.validation == "kshot" and "validation" in splits else [])
        for offset, name in enumerate(names):
            out[name] = per_class(splits[name], label_column, self.k, seed + offset, name)
        return out


def per_class(ds: datasets.Dataset, label_column: str, k: int, seed: int, split: str) -> datasets.Dataset:
    """k rows of each class of ``ds`` drawn with ``seed``, in file order; every row of a class with fewer, with a warning."""
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(ds[label_column]):
        by_class[label].append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    short = []
    for label in sorted(by_class, key=str):
        rows = by_class[label]
        if len(rows) < k:
            short.append(f"{_name(ds, label_column, label)} ({len(rows)})")
        chosen += rows if len(rows) <= k else [rows[i] for i in rng.choice(len(rows), size=k, replace=False)]
    if short:
        log.warning("task.data.few_shot.k=%d: %s has fewer examples of %s: all of them are used", k, split, ", ".join(short))
    log.info("task.data.few_shot.k=%d: %d %s rows over %d classes (seed %d)", k, len(chosen), split, len(by_class), seed)
    return ds.select(sorted(chosen))


def _name(ds: datasets.Dataset, column: str, label: Any) -> str:
    feature = ds.features.get(column)
    return feature.int2str(label) if isinstance(feature, datasets.ClassLabel) else repr(label)
