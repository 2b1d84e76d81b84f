"""The search space: Hydra's sweep syntax to Optuna distributions, and a trial's values back to overrides.

=========================================  ==============================================
``choice(16, 32, 64)``, or ``16,32,64``     ``CategoricalDistribution([16, 32, 64])``
``choice(null, 'a b', [q,v])``              ``CategoricalDistribution([None, "a b", "[q,v]"])``
``range(1, 5)`` (the stop left out)         ``IntDistribution(1, 4)``
``range(0.1, 0.5, 0.1)``                    ``FloatDistribution(0.1, 0.4, step=0.1)``
``shuffle(range(1, 5))``                    ``CategoricalDistribution`` of its values
``interval(0.0, 0.3)``                      ``FloatDistribution(0.0, 0.3)``
``tag(log, interval(1e-5, 1e-3))``          ``FloatDistribution(1e-5, 1e-3, log=True)``
``tag(int, interval(1, 64))``               ``IntDistribution(1, 64)`` (with ``log``: ``log=True``)
=========================================  ==============================================

Hydra reads both bounds of ``interval`` as floats, so an integer interval says so with the ``int`` tag. A choice
that is a list or a dict is, in the study, its override text (Optuna's choices are None, bools, numbers and
strings); ``Space.override`` writes it back unquoted, so Hydra reads the list again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    QuotedString,
    RangeSweep,
    Transformer,
)
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

INTERVAL_TAGS = frozenset({"log", "int"})


@dataclass(frozen=True)
class Space:
    """What every trial of a search is made of: the searched keys' distributions, and the fixed overrides
    (as the user wrote them), which every trial gets."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]
    # Per searched key, its choices that stand for a list or a dict (their override text, e.g. ``[q,v]``).
    literal: dict[str, frozenset[str]] = field(default_factory=dict)

    def override(self, key: str, value: Any, parser: OverridesParser | None = None) -> str:
        """``key=value`` for a trial's value of ``key``: a list's or dict's text as it is, else ``format_override``."""
        if isinstance(value, str) and value in self.literal.get(key, ()):
            return f"{key}={value}"
        return format_override(key, value, parser)


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer.lr": ...}`` from ``hydra.sweeper.params``, whose keys a command-line override
    (``hydra.sweeper.params.optimizer.lr=...``) may have nested instead."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flat_params(value, name))
        else:
            out[name] = value
    return out


def parse_space(params: Mapping[str, Any], arguments: Sequence[str], parser: OverridesParser | None = None) -> Space:
    """The space of ``hydra.sweeper.params`` and the command line's overrides; the command line wins where both
    name a key, so ``optimizer.lr=1e-4`` fixes a searched key and ``optimizer.lr=interval(...)`` searches one."""
    parser = parser or OverridesParser.create()
    # A string is the syntax as written (``choice(...)``, ``1e-4``); YAML's other values (null, numbers) are values.
    lines = [f"{key}={value}" if isinstance(value, str) else format_override(key, value, parser)
             for key, value in flat_params(params).items()] + list(arguments)
    chosen: dict[str, Override] = {}
    for override in parser.parse_overrides(lines):
        chosen.pop(override.get_key_element(), None)  # the later one wins, in its own place
        chosen[override.get_key_element()] = override
    distributions = {key: distribution(o) for key, o in chosen.items() if o.is_sweep_override()}
    literal = {key: frozenset(c for c, is_text in choices(o) if is_text)
               for key, o in chosen.items() if isinstance(o.value(), ChoiceSweep)}
    return Space(distributions, [o.input_line for o in chosen.values() if not o.is_sweep_override()],
                 {key: texts for key, texts in literal.items() if texts})


def choices(override: Override) -> list[tuple[Any, bool]]:
    """A choice sweep's values as Optuna keeps them, each with whether it is a list's or dict's override text:
    a quoted string is its text (``'a b'`` -> ``a b``), ``null`` is None, ``[q,v]`` is ``"[q,v]"``."""
    sweep = override.value()
    assert isinstance(sweep, ChoiceSweep)
    out = []
    for value in sweep.list:  # in the order written, even under shuffle(): every process's study has one order
        if isinstance(value, QuotedString):
            out.append((value.text, False))
        elif value is None or isinstance(value, (str, int, float, bool)):
            out.append((value, False))
        else:  # a list or a dict (Hydra's parser yields no other value)
            out.append((Transformer.str(value), True))
    texts = {c for c, is_text in out if is_text}
    if texts & {c for c, is_text in out if not is_text}:
        raise HydraException(f"{override.input_line}: a string choice reads the same as a list or dict choice")
    return out


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (see the module's table)."""
    value = override.value()
    where = f"{override.input_line}: "
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([c for c, _ in choices(override)])
    if isinstance(value, RangeSweep) and value.shuffle:
        return CategoricalDistribution(list(value.range()))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0 or start is None or stop is None or stop <= start:
            raise HydraException(f"{where}a searched range needs start < stop and a step > 0")
        count = math.ceil((stop - start) / step - 1e-9)  # values start, start + step, ... below stop
        last = start + (count - 1) * step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        unknown = set(value.tags) - INTERVAL_TAGS
        if unknown:
            raise HydraException(f"{where}unknown tag(s) {sorted(unknown)}: an interval takes {sorted(INTERVAL_TAGS)}")
        log = "log" in value.tags
        if "int" in value.tags:
            low, high = float(value.start), float(value.end)
            if not (low.is_integer() and high.is_integer()):
                raise HydraException(f"{where}tag(int, ...) needs whole-number bounds")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise HydraException(f"{where}the search supports choice, range and interval, not {override.value_type}")


def format_override(key: str, value: Any, parser: OverridesParser | None = None) -> str:
    """``key=value`` that Hydra reads back as ``value``: a string is quoted where it would read as something
    else (``'true'``, ``'16'``, a space or a comma), numbers keep every digit (``repr``)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    if not isinstance(value, str):
        raise TypeError(f"{key}: a searched value is a string, number, bool or None, not {type(value).__name__}")
    parser = parser or OverridesParser.create()
    quotes = ("'" + value.replace("'", "\\'") + "'", '"' + value.replace('"', '\\"') + '"')
    for text in (value, *quotes):
        try:
            parsed = parser.parse_override(f"{key}={text}")
        except HydraException:
            continue
        if not parsed.is_sweep_override() and parsed.value() == value and isinstance(parsed.value(), str):
            return f"{key}={text}"
    raise ValueError(f"{key}: cannot write {value!r} as an override that Hydra reads back unchanged")
