"""Extractive QA: answer spans from start/end logits, and SQuAD exact match / F1.

A long context is split into overlapping windows (features), so an example's answer is chosen
across its features: the highest-scoring span of any window, or, for SQuAD 2.0, no answer when
the lowest no-answer score of its windows beats that span by more than a threshold (as in the
Hugging Face ``run_qa`` post-processing). Scores are the sum of the start and end logits.

Normalisation, exact match and F1 are the official SQuAD script's (normalisation from
torchmetrics, which copies it; the tests check EM/F1 against a copy of the official v1.1 script): lower-case, strip punctuation, the articles a/an/the and extra whitespace;
the maximum over the gold answers; gold answers that normalise to nothing are dropped and a
question without any is answered right only by the empty prediction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.text.squad import _normalize_text
from torchmetrics.utilities import dim_zero_cat

NO_SPAN = float("-inf")  # score of a window without any valid span


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation."""
    return _normalize_text(text)


def gold_answers(texts: Sequence[str]) -> list[str]:
    """Gold answers as the official v2 script scores them: ``[""]`` for a question without any."""
    return [t for t in texts if normalize_answer(t)] or [""]


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in gold_answers(answers)))


def _f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:  # no answer on either side: right only if both are empty
        return float(predicted == gold)
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Best bag-of-tokens F1 of the prediction against the gold answers (the official script's
    ``compute_f1``, in plain Python: torchmetrics' tensor version is ~10x slower per pair)."""
    predicted = normalize_answer(prediction).split()
    return max(_f1(predicted, normalize_answer(gold).split()) for gold in gold_answers(answers))


def best_spans(
    start_logits: Tensor,
    end_logits: Tensor,
    context_start: Tensor,
    context_end: Tensor,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per window, the best span among the ``n_best`` top starts x ``n_best`` top ends.

    A span is valid when it lies inside the context tokens ``[context_start, context_end]``,
    ends at or after its start and is at most ``max_answer_length`` tokens long.
    Returns ``(score, start_token, end_token)``; the score is ``-inf`` where no span is valid.
    """
    start_logits, end_logits = start_logits.float(), end_logits.float()
    k = min(n_best, start_logits.shape[-1])
    start_score, start_idx = start_logits.topk(k, dim=-1)  # [B, k]
    end_score, end_idx = end_logits.topk(k, dim=-1)
    starts, ends = start_idx[:, :, None], end_idx[:, None, :]  # [B, k, 1], [B, 1, k]
    lo, hi = context_start[:, None, None], context_end[:, None, None]
    valid = (ends >= starts) & (ends - starts < max_answer_length) & (starts >= lo) & (ends <= hi)
    scores = (start_score[:, :, None] + end_score[:, None, :]).masked_fill(~valid, NO_SPAN).flatten(1)
    score, best = scores.max(dim=-1)
    start = start_idx.gather(1, (best // k)[:, None]).squeeze(1)
    end = end_idx.gather(1, (best % k)[:, None]).squeeze(1)
    return score, start, end


def null_scores(start_logits: Tensor, end_logits: Tensor, cls_index: Tensor) -> Tensor:
    """Per window, the no-answer score: start + end logit of the CLS token."""
    index = cls_index[:, None]
    return (start_logits.float().gather(1, index) + end_logits.float().gather(1, index)).squeeze(1)


def span_text(context: str, offsets: Sequence[Sequence[int]], start: int, end: int, score: float) -> tuple[str, int]:
    """The context characters of token span ``[start, end]`` and where they begin (``("", -1)``
    for a window without a valid span)."""
    if score == NO_SPAN:
        return "", -1
    begin = offsets[start][0]
    return context[begin : offsets[end][1]], begin


def best_per_example(example_id: Tensor, score: Tensor, largest: bool = True) -> tuple[Tensor, Tensor]:
    """For each distinct example id (ascending): the index of its feature with the highest
    (``largest``) or lowest score. Returns ``(example ids, feature indices)``."""
    by_score = torch.argsort(score, descending=largest, stable=True)
    by_example = torch.argsort(example_id[by_score], stable=True)  # stable: best score first per example
    order = by_score[by_example]
    ids = example_id[order]
    first = torch.ones_like(ids, dtype=torch.bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first], order[first]


def choose_answers(
    example_id: Tensor, span_score: Tensor, null_score: Tensor, with_no_answer: bool, null_threshold: float = 0.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per example (ascending id): ``(example ids, feature of the best span, feature of the lowest
    no-answer score, whether the answer is "no answer")``. Without ``with_no_answer`` (SQuAD 1.1)
    an answer is always given."""
    ids, span_pick = best_per_example(example_id, span_score, largest=True)
    _, null_pick = best_per_example(example_id, null_score, largest=False)
    if with_no_answer:
        no_answer = null_score[null_pick] - span_score[span_pick] > null_threshold
    else:
        no_answer = torch.zeros_like(ids, dtype=torch.bool)
    return ids, span_pick, null_pick, no_answer


def percent(scores: Tensor) -> Tensor:
    """``100 * sum / count`` of float64 scores, as the official script divides its Python-float sums."""
    return 100 * scores.sum() / scores.numel()


class SquadScore(Metric):
    """SQuAD exact match and F1 (in percent, as the official script reports them) over examples
    whose windows may arrive in different batches and on different ranks.

    ``update`` scores each window's best span (and the empty answer) against the gold answers at
    once and keeps only numbers: per window its example id, span score, no-answer score and the
    EM/F1 of both answers. ``compute`` picks each example's answer across its windows. States are
    tensors concatenated across ranks, so DDP gives the single-process result; no logits are kept.
    EM/F1 are kept and averaged in float64, so the percentages equal the official script's (float32
    gives 53.333336 for 32 of 60).

    Args:
        with_no_answer: SQuAD 2.0: an example may have no answer (see ``choose_answers``); adds
            ``has_ans_*`` / ``no_ans_*`` breakdowns when such examples are present.
        null_threshold: no answer when its score beats the best span's by more than this.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    STATES = ("example_id", "span_score", "span_em", "span_f1", "null_score", "null_em", "null_f1")

    def __init__(self, with_no_answer: bool = False, null_threshold: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.with_no_answer = with_no_answer
        self.null_threshold = null_threshold
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        example_id: Tensor,
        span_score: Tensor,
        span_text: Sequence[str],
        null_score: Tensor,
        answers: Sequence[Sequence[str]],
    ) -> None:
        """One entry per window: its example, best span (score and text), no-answer score and the
        example's gold answer texts (empty for no answer)."""
        device = span_score.device
        values = {
            "span_em": [exact_match(t, a) for t, a in zip(span_text, answers, strict=True)],
            "span_f1": [f1_score(t, a) for t, a in zip(span_text, answers, strict=True)],
            "null_em": [exact_match("", a) for a in answers],
        }
        values["null_f1"] = values["null_em"]  # the empty answer scores 1 or 0 on both
        self.example_id.append(example_id.to(device=device, dtype=torch.long))
        self.span_score.append(span_score.float())
        self.null_score.append(null_score.float().to(device))
        for name, v in values.items():
            getattr(self, name).append(torch.tensor(v, dtype=torch.float64, device=device))

    def compute(self) -> dict[str, Tensor]:
        state = {name: dim_zero_cat(getattr(self, name)) if getattr(self, name) else torch.zeros(0, device=self.device)
                 for name in self.STATES}
        if state["example_id"].numel() == 0:
            return {"exact_match": torch.tensor(0.0, dtype=torch.float64), "f1": torch.tensor(0.0, dtype=torch.float64)}
        _, span, null, no_answer = choose_answers(
            state["example_id"].long(), state["span_score"], state["null_score"], self.with_no_answer, self.null_threshold
        )
        em = torch.where(no_answer, state["null_em"][null], state["span_em"][span])
        f1 = torch.where(no_answer, state["null_f1"][null], state["span_f1"][span])
        out = {"exact_match": percent(em), "f1": percent(f1)}
        if self.with_no_answer:
            unanswerable = state["null_em"][null] == 1  # only the empty answer is right
            for name, subset in (("has_ans", ~unanswerable), ("no_ans", unanswerable)):
                if subset.any():
                    out[f"{name}_exact_match"] = percent(em[subset])
                    out[f"{name}_f1"] = percent(f1[subset])
        return out


def qa_metrics(with_no_answer: bool = False, null_threshold: float = 0.0) -> MetricCollection:
    """``exact_match`` and ``f1`` (+ the SQuAD 2.0 breakdown) as one collection."""
    return MetricCollection({"squad": SquadScore(with_no_answer=with_no_answer, null_threshold=null_threshold)})
