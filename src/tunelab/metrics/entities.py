"""Entity-level NER metrics exactly as ``seqeval`` computes them, as a torchmetrics Metric.

Two ways to read entities from a sentence's tags, as in seqeval:

- ``mode="default"``: conlleval's chunking (``seqeval.metrics.sequence_labeling.get_entities``). It is
  lenient: an ``I-X`` after ``O`` or after another type starts an entity, an ``E-X`` without ``B-X`` too.
- ``mode="strict"``: ``seqeval.scheme.Entities`` for a declared scheme (IOB1, IOB2 or BIOES): an entity
  counts only when it starts and ends as the scheme says (IOB2: an ``I-X`` without ``B-X`` starts nothing;
  BIOES: ``B-X I-X`` without ``E-X`` is no entity).

A predicted entity is right when its type, first and last word equal a gold entity's. Precision, recall
and F1 are micro-averaged over entities (and given per type), with seqeval's default of 0 where a ratio
is 0/0; accuracy is the fraction of words whose tag is right. The metric never joins words of different
sentences, and the words of one sentence may arrive in any order over several batches and ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tunelab.errors import ConfigError

SCHEMES = ("IOB1", "IOB2", "BIOES")
MODES = ("default", "strict")
MODE_KEY = "task.module.entity_mode"
SCHEME_KEY = "task.data.tag_scheme"

_ANY = "IOBES"  # every prefix a scheme allows, and the sentence-end "O"


@dataclass(frozen=True)
class _Scheme:
    """seqeval's patterns of one scheme: (previous prefixes, current prefixes, type condition)."""

    allowed: str
    start: tuple[tuple[str, str, str], ...]
    inside: tuple[tuple[str, str, str], ...]
    end: tuple[tuple[str, str, str], ...]


_STRICT = {  # seqeval.scheme.IOB1 / IOB2 / IOBES
    "IOB1": _Scheme(
        "IOB",
        start=(("O", "I", "any"), ("I", "I", "diff"), ("B", "I", "any"), ("I", "B", "same"), ("B", "B", "same")),
        inside=(("B", "I", "same"), ("I", "I", "same")),
        end=(("I", "I", "diff"), ("I", "O", "any"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
             ("B", "B", "same")),
    ),
    "IOB2": _Scheme(
        "IOB",
        start=((_ANY, "B", "any"),),
        inside=(("B", "I", "same"), ("I", "I", "same")),
        end=(("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"), ("B", "O", "any"), ("B", "I", "diff"),
             ("B", "B", "any")),
    ),
    "BIOES": _Scheme(
        "IOBES",
        start=((_ANY, "B", "any"), (_ANY, "S", "any")),
        inside=(("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")),
        end=(("S", _ANY, "any"), ("E", _ANY, "any")),
    ),
}

_Token = tuple[str, str]  # (prefix letter, entity type)
_OUTSIDE: _Token = ("O", "_")


def check_mode(mode: str, scheme: str | None) -> None:
    """ConfigError unless ``mode`` is default/strict, ``scheme`` is None or one of SCHEMES, and strict has a scheme."""
    if mode not in MODES:
        raise ConfigError(f"{MODE_KEY}={mode!r}: the entity mode is one of {', '.join(MODES)}")
    if scheme is not None and scheme not in SCHEMES:
        raise ConfigError(f"{SCHEME_KEY}={scheme!r}: the tag scheme is one of {', '.join(SCHEMES)}")
    if mode == "strict" and scheme is None:
        raise ConfigError(f"{MODE_KEY}=strict reads entities as a tag scheme prescribes: set {SCHEME_KEY} "
                          f"to one of {', '.join(SCHEMES)}")


def _default_type(tag: str) -> str:
    return tag[1:].split("-", maxsplit=1)[-1] or "_"


def _strict_type(tag: str) -> str:
    return tag[1:].strip("-") or "_"


def _default_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """seqeval's ``get_entities`` (conlleval chunking) over one sentence."""
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[0], _default_type(chunk)
        ends = (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
                or (prev_tag not in ("O", ".") and prev_type != type_))
        if ends:
            out.append((prev_type, begin, i - 1))
        starts = (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
                  or (tag not in ("O", ".") and prev_type != type_))
        if starts:
            begin = i
        prev_tag, prev_type = tag, type_
    return out


def _matches(patterns: tuple[tuple[str, str, str], ...], prev: _Token, token: _Token) -> bool:
    return any(
        prev[0] in before and token[0] in now
        and (cond == "any" or (cond == "same") == (prev[1] == token[1]))
        for before, now, cond in patterns
    )


def _strict_entities(tags: Sequence[str], scheme: _Scheme) -> list[tuple[str, int, int]]:
    """seqeval's ``Tokens(tags, scheme).entities`` (end made inclusive)."""
    tokens: list[_Token] = []
    for tag in tags:
        if not tag or tag[0] not in scheme.allowed:
            raise ValueError(f"tag {tag!r} is not allowed in this scheme: its prefixes are {', '.join(scheme.allowed)}")
        tokens.append((tag[0], _strict_type(tag)))
    tokens.append(_OUTSIDE)  # the sentence end: never inside an entity, so every entity stops before it
    out = []
    i, prev = 0, _OUTSIDE
    while i < len(tokens):
        if _matches(scheme.start, prev, tokens[i]):
            end = i + 1
            while _matches(scheme.inside, tokens[end - 1], tokens[end]):
                end += 1
            if _matches(scheme.end, tokens[end - 1], tokens[end]):
                out.append((tokens[i][1], i, end - 1))
            i = end
        else:
            i += 1
        prev = tokens[i - 1]
    return out


def entities(tags: Sequence[str], mode: str = "default", scheme: str | None = None) -> list[tuple[str, int, int]]:
    """The entities ``(type, first word, last word)`` of one sentence's tags, as seqeval finds them.

    ``mode="default"``: conlleval chunking (``B-``/``I-``/``E-``/``S-``/``O``; a tag without a type such as
    ``B`` has type ``_``). ``mode="strict"``: the rules of ``scheme`` (IOB1, IOB2 or BIOES); a tag whose
    prefix the scheme does not allow is a ValueError, as in seqeval.
    """
    check_mode(mode, scheme)
    if mode == "strict":
        return _strict_entities(tags, _STRICT[scheme])
    return _default_entities(tags)


def infer_scheme(sequences: Iterable[Sequence[str]]) -> str:
    """The tag scheme of tag sequences: BIOES if any ``E-``/``S-`` tag; IOB1 if an ``I-X`` begins an
    entity (at the start, after ``O`` or after another type: IOB1 uses ``B-`` only between adjacent
    entities of one type); IOB2 otherwise."""
    iob1 = False
    for tags in sequences:
        prev = _OUTSIDE
        for tag in tags:
            token = (tag[0], _strict_type(tag))
            if token[0] in ("E", "S"):
                return "BIOES"
            iob1 = iob1 or (token[0] == "I" and (prev[0] == "O" or prev[1] != token[1]))
            prev = token
    return "IOB1" if iob1 else "IOB2"


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _scores(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 as seqeval divides them (0 where a denominator is 0)."""
    precision, recall = _ratio(correct, predicted), _ratio(correct, gold)
    denominator = precision + recall
    return precision, recall, 2 * precision * recall / (denominator if denominator else 1.0)


class EntityMetrics(Metric):
    """Entity precision/recall/F1 (micro and per type) and word accuracy, as seqeval computes them.

    ``update`` takes one entry per scored word: its sentence id, its index in the sentence, the predicted
    and the gold tag id (ids into ``labels``). The words of a sentence may come in any order and in
    several updates (a long sentence is cut into windows that land in different batches and ranks):
    ``compute`` puts each sentence back together before reading entities, so the states are plain
    concatenated lists that torchmetrics gathers across ranks. They are kept as float64 (exact for ids
    below 2**53) because torchmetrics stands in an empty float tensor of the metric's dtype for a rank
    that saw no words, and all ranks must gather tensors of one dtype.

    ``compute`` returns ``precision``, ``recall``, ``f1``, ``accuracy`` and, for every entity type named
    in ``labels`` (sorted), ``precision/T``, ``recall/T``, ``f1/T`` and ``support/T`` (gold entities),
    as float64 scalars (all zeros before any update).

    Args:
        labels: tag names in id order, e.g. ``["O", "B-PER", "I-PER"]``.
        mode: ``default`` (conlleval, lenient) or ``strict`` (needs ``scheme``); see ``entities``.
        scheme: IOB1, IOB2 or BIOES.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    STATES = ("sentence_ids", "word_ids", "preds", "targets")

    def __init__(self, labels: Sequence[str], mode: str = "default", scheme: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        check_mode(mode, scheme)
        prefixes = [p for p in (_STRICT[scheme].allowed if mode == "strict" else _ANY) if p != "O"]
        for tag in labels:
            if tag != "O" and not (tag[:1] in prefixes and tag[1:2] in ("", "-")):
                raise ConfigError(
                    f"tag {tag!r} in the labels is not an entity tag for {MODE_KEY}={mode}"
                    + (f" and {SCHEME_KEY}={scheme}" if mode == "strict" else "")
                    + f": tags are 'O' or a prefix ({', '.join(prefixes)}), '-' and the entity type"
                )
        self.labels = list(labels)
        self.mode = mode
        self.scheme = scheme
        type_of = _strict_type if mode == "strict" else _default_type
        self.entity_types = sorted({type_of(tag) for tag in self.labels if tag != "O"})
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(self, sentence_ids: Tensor, word_ids: Tensor, preds: Tensor, targets: Tensor) -> None:
        """One entry per scored word: sentence id, word index in it, predicted and gold tag id (1-D, equal lengths)."""
        values = (sentence_ids, word_ids, preds, targets)
        if any(v.ndim != 1 or v.shape != sentence_ids.shape for v in values):
            raise ValueError(f"EntityMetrics.update takes 1-D tensors of one length, got shapes "
                             f"{[tuple(v.shape) for v in values]}")
        for name, value in zip(self.STATES, values, strict=True):
            getattr(self, name).append(value.detach().to(device=self.device, dtype=torch.float64))

    def _state(self, name: str) -> Tensor:
        value = getattr(self, name)  # a list of tensors, or one tensor once synced across ranks
        return dim_zero_cat(value).long() if len(value) else torch.zeros(0, dtype=torch.long, device=self.device)

    def _words(self) -> list[list[int]]:
        """Sentence, predicted and gold tag ids of every word as Python ints, sorted by (sentence, word);
        a word given twice or a tag id outside ``labels`` is an error."""
        sentence, word, pred, gold = (self._state(name) for name in self.STATES)
        order = torch.argsort(word, stable=True)
        order = order[torch.argsort(sentence[order], stable=True)]
        sentence, word, pred, gold = sentence[order], word[order], pred[order], gold[order]
        twice = ((sentence[1:] == sentence[:-1]) & (word[1:] == word[:-1])).nonzero()
        if twice.numel():
            at = int(twice[0, 0])
            raise RuntimeError(f"EntityMetrics: word {int(word[at])} of sentence {int(sentence[at])} was scored "
                               "twice (overlapping windows must score each word in one window only)")
        for ids in (pred, gold):
            bad = (ids < 0) | (ids >= len(self.labels))
            if bad.any():
                raise RuntimeError(f"EntityMetrics: tag id {int(ids[bad][0])} is not one of the "
                                   f"{len(self.labels)} labels (ignored positions must be left out)")
        return [t.tolist() for t in (sentence, pred, gold)]

    def compute(self) -> dict[str, Tensor]:
        sentence, pred, gold = self._words()
        found: dict[str, set[tuple[int, str, int, int]]] = {"pred": set(), "gold": set()}
        for sid, words in groupby(zip(sentence, pred, gold, strict=True), key=itemgetter(0)):
            _, pred_ids, gold_ids = zip(*words, strict=True)
            for side, ids in (("pred", pred_ids), ("gold", gold_ids)):
                tags = [self.labels[i] for i in ids]
                found[side].update((sid, *entity) for entity in entities(tags, self.mode, self.scheme))
        sides = (found["pred"] & found["gold"], found["pred"], found["gold"])  # right, predicted, gold
        out: dict[str, float] = {}
        out["precision"], out["recall"], out["f1"] = _scores(*(len(side) for side in sides))
        out["accuracy"] = _ratio(sum(p == g for p, g in zip(pred, gold, strict=True)), len(pred))
        for t in self.entity_types:
            right, predicted, support = (sum(entity[1] == t for entity in side) for side in sides)
            out[f"precision/{t}"], out[f"recall/{t}"], out[f"f1/{t}"] = _scores(right, predicted, support)
            out[f"support/{t}"] = support
        return {key: torch.tensor(float(v), dtype=torch.float64, device=self.device) for key, v in out.items()}
