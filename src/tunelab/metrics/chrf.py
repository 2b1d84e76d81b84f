"""chrF (Popović 2015) and chrF++ (Popović 2017) exactly as sacrebleu computes them.

``CHRF()`` equals ``sacrebleu.metrics.CHRF().corpus_score(...).score / 100`` (our 0-1 scale; sacrebleu
prints 0-100), and ``CHRF(word_order=2)`` sacrebleu's ``CHRF(word_order=2)`` (chrF++), on sacrebleu's defaults:
character n-grams of orders 1-6 with whitespace removed, word n-grams (chrF++) of words split on
whitespace with one punctuation mark split off a word's end (or else its start), case kept, beta 2,
no epsilon smoothing. The score is corpus-level: the hypothesis, reference and matched n-gram counts
of each order are summed over all sentences, then precision and recall are averaged over the orders
present in both the hypotheses and the references (the "effective order"), and combined as an
F-beta score. A sentence's reference n-grams count even when its hypothesis is empty; its
hypothesis n-grams of an order count only when its reference has n-grams of that order. With
several references a sentence takes the statistics of the one with the best sentence-level score.

The states are integer count tensors summed across DDP ranks, so a multi-process score equals the
single-process one; integers are also left alone by a module cast to half precision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

PUNCTUATION = frozenset('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')


def char_ngrams(text: str, n: int) -> Counter[str]:
    """Character n-grams of ``text`` with all whitespace removed."""
    line = "".join(text.split())
    return Counter(line[i : i + n] for i in range(len(line) - n + 1))


def words(text: str) -> list[str]:
    """Whitespace-separated words with a final (else initial) punctuation mark split off, as in
    sacrebleu (and the original chrF++.py): ``"(hi)"`` gives ``"(hi"`` and ``")"``."""
    out: list[str] = []
    for word in text.split():
        if len(word) > 1 and word[-1] in PUNCTUATION:
            out += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in PUNCTUATION:
            out += [word[0], word[1:]]
        else:
            out.append(word)
    return out


def ngram_counts(text: str, char_order: int, word_order: int) -> list[Counter[str]]:
    """The n-gram counters of ``text``: character orders 1..``char_order``, then word orders 1..``word_order``."""
    counts = [char_ngrams(text, n) for n in range(1, char_order + 1)]
    tokens = words(text) if word_order else []
    counts += [Counter(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, word_order + 1)]
    return counts


def match_statistics(hypothesis: Sequence[Counter[str]], reference: Sequence[Counter[str]]) -> list[tuple[int, int, int]]:
    """Per order: (hypothesis n-grams, reference n-grams, matched n-grams); hypothesis n-grams are
    not counted for an order the reference has none of."""
    stats = []
    for hyp, ref in zip(hypothesis, reference, strict=True):
        matched = sum(min(count, ref[gram]) for gram, count in hyp.items() if gram in ref)
        stats.append((sum(hyp.values()) if ref else 0, sum(ref.values()), matched))
    return stats


def f_score(stats: Sequence[Sequence[float]], beta: float) -> float:
    """F-beta of the precision and recall averaged over the orders with hypothesis and reference
    n-grams (0 when there is none), on the 0-1 scale."""
    effective = [(matched / hyp, matched / ref) for hyp, ref, matched in stats if hyp > 0 and ref > 0]
    if not effective:
        return 0.0
    precision = sum(p for p, _ in effective) / len(effective)
    recall = sum(r for _, r in effective) / len(effective)
    if not precision + recall:
        return 0.0
    factor = beta**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


class CHRF(Metric):
    """Corpus chrF (``word_order=0``) or chrF++ (``word_order=2``) on the 0-1 scale (sacrebleu's / 100).

    ``update(preds, target)``: one hypothesis per sentence and, per sentence, its reference texts
    (a list of them, or one string).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, word_order: int = 0, char_order: int = 6, beta: float = 2, **kwargs):
        super().__init__(**kwargs)
        self.char_order, self.word_order, self.beta = char_order, word_order, beta
        orders = char_order + word_order
        for name in ("hyp_ngrams", "ref_ngrams", "matched_ngrams"):
            self.add_state(name, default=torch.zeros(orders, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str | Sequence[str]]) -> None:
        totals = [[0, 0, 0] for _ in range(self.char_order + self.word_order)]
        for i, (hypothesis, references) in enumerate(zip(preds, target, strict=True)):
            references = [references] if isinstance(references, str) else references
            if not references:
                raise ValueError(f"chrF: sentence {i} of the batch has no reference")
            hyp = ngram_counts(hypothesis, self.char_order, self.word_order)
            candidates = [match_statistics(hyp, ngram_counts(ref, self.char_order, self.word_order)) for ref in references]
            # several references: the best-scoring one, the first of equals (as sacrebleu)
            best = candidates[0] if len(candidates) == 1 else max(candidates, key=lambda stats: f_score(stats, self.beta))
            for total, order_stats in zip(totals, best, strict=True):
                for j, value in enumerate(order_stats):
                    total[j] += value
        counts = torch.tensor(totals, dtype=torch.long, device=self.hyp_ngrams.device).reshape(-1, 3)
        self.hyp_ngrams += counts[:, 0]
        self.ref_ngrams += counts[:, 1]
        self.matched_ngrams += counts[:, 2]

    def compute(self) -> Tensor:
        stats = torch.stack([self.hyp_ngrams, self.ref_ngrams, self.matched_ngrams], dim=1).tolist()
        return torch.tensor(f_score(stats, self.beta), dtype=torch.float64, device=self.hyp_ngrams.device)
