"""The search space: Hydra's sweep syntax to Optuna distributions, and a trial's values back to overrides.

=========================================  ==============================================
``choice(16, 32, 64)``, or ``16,32,64``     ``CategoricalDistribution([16, 32, 64])``
``range(1, 5)`` (the stop left out)         ``IntDistribution(1, 4)``
``range(0.1, 0.5, 0.1)``                    ``FloatDistribution(0.1, 0.4, step=0.1)``
``shuffle(range(1, 5))``                    ``CategoricalDistribution`` of its values
``interval(0.0, 0.3)``                      ``FloatDistribution(0.0, 0.3)``
``tag(log, interval(1e-5, 1e-3))``          ``FloatDistribution(1e-5, 1e-3, log=True)``
``tag(int, interval(1, 64))``               ``IntDistribution(1, 64)`` (with ``log``: ``log=True``)
=========================================  ==============================================

Hydra reads both bounds of ``interval`` as floats, so an integer interval says so with the ``int`` tag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

INTERVAL_TAGS = frozenset({"log", "int"})


@dataclass(frozen=True)
class Space:
    """What every trial of a search is made of: the searched keys' distributions, and the fixed overrides
    (as the user wrote them), which every trial gets."""

    distributions: dict[str, BaseDistribution]
    fixed: list[str]


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
    lines = [f"{key}={value}" for key, value in flat_params(params).items()] + list(arguments)
    chosen: dict[str, Override] = {}
    for override in parser.parse_overrides(lines):
        chosen.pop(override.get_key_element(), None)  # the later one wins, in its own place
        chosen[override.get_key_element()] = override
    distributions = {key: distribution(o) for key, o in chosen.items() if o.is_sweep_override()}
    return Space(distributions, [o.input_line for o in chosen.values() if not o.is_sweep_override()])


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (see the module's table)."""
    value = override.value()
    where = f"{override.input_line}: "
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
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
