"""SQuAD normalisation, EM/F1 and span decoding against hand-computed values and the official script."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest
import torch
from torchmetrics.functional.text.squad import _compute_f1_score
from torchmetrics.text import SQuAD

from tunelab.metrics.qa import (
    SquadScore,
    best_spans,
    exact_match,
    f1_score,
    normalize_answer,
    null_scores,
    qa_metrics,
    span_text,
)

NEG = -10.0


@pytest.mark.parametrize("text,expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an apple,  a PEAR and the plum. ", "apple pear and plum"),
    ("theatre (a play)", "theatre play"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("the", ""),
])
def test_normalisation_is_the_official_one(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_and_f1_hand_values() -> None:
    assert exact_match("The Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred {cat, sat} vs gold {cat, sat, down}: P = 1, R = 2/3, F1 = 0.8
    assert f1_score("the cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # the best gold answer counts: {paris} vs {paris, france} -> 2/3, vs {paris} -> 1
    assert f1_score("Paris", ["Paris, France", "paris"]) == 1.0
    assert f1_score("in Paris", ["Paris, France"]) == pytest.approx(0.5)  # P = 1/2, R = 1/2
    assert f1_score("Lyon", ["Paris"]) == 0.0
    # repeated tokens count once each: pred {a1, a1, b} vs gold {a1, b, c}: 2 common, P = R = 2/3
    assert f1_score("x x y", ["x y z"]) == pytest.approx(2 / 3)


def test_no_answer_semantics_of_squad_v2() -> None:
    assert exact_match("", []) == 1.0 and f1_score("", []) == 1.0
    assert exact_match("Paris", []) == 0.0 and f1_score("Paris", []) == 0.0
    assert exact_match("", ["Paris"]) == 0.0 and f1_score("", ["Paris"]) == 0.0
    assert f1_score("", ["the"]) == 1.0  # gold answers that normalise to nothing count as no answer


def test_f1_matches_torchmetrics_copy_of_the_official_script() -> None:
    rng = random.Random(0)
    words = ["the", "cat", "a", "sat", "on", "mat", "Mat,", "an", "dog", "."]
    for _ in range(300):
        pred = " ".join(rng.choices(words, k=rng.randint(0, 5)))
        gold = " ".join(rng.choices(words, k=rng.randint(1, 5)))
        if normalize_answer(gold):
            assert f1_score(pred, [gold]) == pytest.approx(float(_compute_f1_score(pred, gold)))


def test_squad_score_equals_torchmetrics_squad_with_one_window_per_example() -> None:
    rng = random.Random(1)
    words = ["red", "the", "blue", "sky", "sea", "a", "green"]
    golds = [[" ".join(rng.choices(["blue", "sky", "sea", "green"], k=2)) for _ in range(rng.randint(1, 3))] for _ in range(40)]
    preds = [" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(40)]
    ours = SquadScore()
    ours.update(torch.arange(40), torch.zeros(40), preds, torch.zeros(40), golds)
    reference = SQuAD()(
        [{"prediction_text": p, "id": str(i)} for i, p in enumerate(preds)],
        [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(golds)],
    )
    result = ours.compute()
    assert float(result["exact_match"]) == pytest.approx(float(reference["exact_match"]), abs=1e-4)
    assert float(result["f1"]) == pytest.approx(float(reference["f1"]), abs=1e-4)


class OfficialSquadV11:
    """The official SQuAD v1.1 evaluation script's scoring, copied in plain Python (evaluate-v1.1.py)."""

    @staticmethod
    def normalize_answer(s: str) -> str:
        def remove_articles(text: str) -> str:
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text: str) -> str:
            return " ".join(text.split())

        def remove_punc(text: str) -> str:
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    @classmethod
    def f1_score(cls, prediction: str, ground_truth: str) -> float:
        prediction_tokens = cls.normalize_answer(prediction).split()
        ground_truth_tokens = cls.normalize_answer(ground_truth).split()
        common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    @classmethod
    def exact_match_score(cls, prediction: str, ground_truth: str) -> bool:
        return cls.normalize_answer(prediction) == cls.normalize_answer(ground_truth)

    @staticmethod
    def metric_max_over_ground_truths(metric_fn, prediction: str, ground_truths: list[str]) -> float:
        return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)

    @classmethod
    def evaluate(cls, golds: list[list[str]], predictions: list[str]) -> dict[str, float]:
        f1 = exact_match = total = 0
        for ground_truths, prediction in zip(golds, predictions, strict=True):
            total += 1
            exact_match += cls.metric_max_over_ground_truths(cls.exact_match_score, prediction, ground_truths)
            f1 += cls.metric_max_over_ground_truths(cls.f1_score, prediction, ground_truths)
        return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def test_squad_score_equals_the_official_v11_script_on_random_pairs() -> None:
    rng = random.Random(2)
    words = ["The", "cat", "a", "sat", "on", "mat", "Mat,", "an", "dog", ".", "U.S.", "(red)", "Éclair", "the end"]
    phrase = lambda lo: " ".join(rng.choices(words, k=rng.randint(lo, 4)))  # noqa: E731
    golds = []
    while len(golds) < 257:  # v1.1 gold answers are spans: none normalises to nothing
        answers = [phrase(1) for _ in range(rng.randint(1, 3))]
        if all(normalize_answer(a) for a in answers):
            golds.append(answers)
    preds = [phrase(0) for _ in golds]
    metric = SquadScore()
    for start in range(0, len(golds), 50):  # several batches
        ids = torch.arange(start, min(start + 50, len(golds)))
        metric.update(ids, torch.zeros(len(ids)), preds[start : start + 50], torch.zeros(len(ids)), golds[start : start + 50])
    ours = {k: v.item() for k, v in metric.compute().items()}
    official = OfficialSquadV11.evaluate(golds, preds)
    assert 0 < official["exact_match"] < official["f1"] < 100
    assert ours == {k: pytest.approx(v, abs=1e-9) for k, v in official.items()}


def test_percentages_are_float64_as_the_official_script_divides() -> None:
    """32 exact of 60: 53.333333333333336, where float32 gives 53.333336."""
    metric = SquadScore()
    golds = [["blue sky"]] * 60
    preds = ["blue sky"] * 32 + ["red sea"] * 28
    metric.update(torch.arange(60), torch.zeros(60), preds, torch.zeros(60), golds)
    result = metric.compute()
    assert all(v.dtype == torch.float64 for v in result.values())
    assert result["exact_match"].item() == pytest.approx(100 * 32 / 60, abs=1e-9)
    assert result["f1"].item() == pytest.approx(100 * 32 / 60, abs=1e-9)


def logits(length: int, values: dict[int, float]) -> torch.Tensor:
    out = torch.full((length,), NEG)
    for i, v in values.items():
        out[i] = v
    return out


def test_best_span_skips_invalid_candidates() -> None:
    # tokens: 0 CLS, 1-2 question, 3 SEP, 4-9 context, 10 SEP
    start = logits(11, {1: 9.0, 7: 5.0, 4: 3.0})  # 1 lies in the question
    end = logits(11, {10: 9.0, 5: 6.0, 8: 2.0})  # 10 is a SEP; 5 ends before start 7
    lo, hi = torch.tensor([4]), torch.tensor([9])
    # candidates (top 3 x top 3): only 7-8 (5 + 2), 4-5 (3 + 6) and 4-8 (3 + 2) are valid
    assert [t.item() for t in best_spans(start[None], end[None], lo, hi, n_best=3, max_answer_length=5)] == [9.0, 4, 5]
    assert best_spans(start[None], end[None], lo, hi, n_best=3, max_answer_length=1)[0].item() == float("-inf")
    assert best_spans(start[None], end[None], lo, hi, n_best=1, max_answer_length=5)[0].item() == float("-inf")
    no_answer = null_scores(start[None], end[None], torch.tensor([0]))
    assert no_answer.item() == 2 * NEG


def windows() -> dict:
    """Two windows of one example, overlapping by two words; the answer "san jose" starts at the
    first window's last context token, so it appears whole only in the second window.

    context: "we flew to san jose today" (characters: we 0-2, flew 3-7, to 8-10, san 11-14, jose 15-19, today 20-25)
    window 1: CLS q SEP we flew to san SEP      (context tokens 3-6)
    window 2: CLS q SEP to san jose today SEP   (context tokens 3-6)
    """
    context = "we flew to san jose today"
    q = [0, 0]
    return {
        "context": context,
        "offsets": [[q, q, q, [0, 2], [3, 7], [8, 10], [11, 14], q], [q, q, q, [8, 10], [11, 14], [15, 19], [20, 25], q]],
        # window 1 is most confident about "san" alone; window 2 about "san jose", scoring higher
        "start": torch.stack([logits(8, {6: 4.0, 0: 1.0}), logits(8, {4: 5.0, 0: 1.0})]),
        "end": torch.stack([logits(8, {6: 3.0, 0: 1.0}), logits(8, {5: 4.5, 0: 1.0})]),
    }


def decode(w: dict, rows: list[int]) -> tuple:
    lo, hi = torch.tensor([3] * len(rows)), torch.tensor([6] * len(rows))
    score, s, e = best_spans(w["start"][rows], w["end"][rows], lo, hi)
    texts = [span_text(w["context"], w["offsets"][r], s[i].item(), e[i].item(), score[i].item())[0]
             for i, r in enumerate(rows)]
    return score, texts, null_scores(w["start"][rows], w["end"][rows], torch.zeros(len(rows), dtype=torch.long))


def test_an_answer_across_a_stride_boundary_is_taken_from_the_window_holding_it() -> None:
    w = windows()
    score, texts, null = decode(w, [0, 1])
    assert texts == ["san", "san jose"] and score.tolist() == [7.0, 9.5] and null.tolist() == [2.0, 2.0]
    assert span_text(w["context"], w["offsets"][1], 4, 5, 9.5) == ("san jose", 11)
    metric = SquadScore()
    for row in (1, 0):  # the windows arrive in different batches, in any order
        score, texts, null = decode(w, [row])
        metric.update(torch.tensor([7]), score, texts, null, [["San Jose"]])
    assert {k: float(v) for k, v in metric.compute().items()} == {"exact_match": 100.0, "f1": 100.0}


def test_squad_v2_no_answer_against_the_best_span() -> None:
    # example 0 (no gold answer): null 6 beats the span's 5; example 1 (gold "blue"): span 8 beats null 2
    def run(threshold: float) -> dict[str, float]:
        metric = qa_metrics(with_no_answer=True, null_threshold=threshold).clone(prefix="val/")
        metric.update(example_id=torch.tensor([0, 0, 1]), span_score=torch.tensor([5.0, 4.0, 8.0]),
                      span_text=["red", "sky", "blue"], null_score=torch.tensor([9.0, 6.0, 2.0]),
                      answers=[[], [], ["blue"]])
        return {k: round(float(v), 4) for k, v in metric.compute().items()}

    assert run(0.0) == {"val/exact_match": 100.0, "val/f1": 100.0, "val/has_ans_exact_match": 100.0,
                        "val/has_ans_f1": 100.0, "val/no_ans_exact_match": 100.0, "val/no_ans_f1": 100.0}
    # a threshold above 6 - 5 keeps the span "red" for example 0: wrong there, right on example 1
    assert run(1.5)["val/exact_match"] == 50.0 and run(1.5)["val/no_ans_f1"] == 0.0
    # SQuAD 1.1 mode never answers "no answer"
    v1 = SquadScore(with_no_answer=False)
    v1.update(torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), ["blue", "blue"], torch.tensor([9.0, 9.0]), [["blue"], ["sky"]])
    assert {k: float(v) for k, v in v1.compute().items()} == {"exact_match": 50.0, "f1": 50.0}


def test_states_are_tensors_that_concatenate_across_ranks() -> None:
    """What DDP does: each rank's states are concatenated; an example split across ranks is still
    scored once, from its best window."""
    w = windows()
    ranks = [SquadScore(), SquadScore()]
    for rank, row, other in zip(ranks, (0, 1), (4, 5), strict=True):
        score, texts, null = decode(w, [row])
        rank.update(torch.tensor([3]), score, texts, null, [["san jose"]])
        rank.update(torch.tensor([other]), torch.tensor([1.0]), ["x"], torch.tensor([0.0]), [["x"]])
    for name in SquadScore.STATES:
        assert all(isinstance(t, torch.Tensor) for r in ranks for t in getattr(r, name))
    merged = ranks[0].clone()
    merged.merge_state(ranks[1])  # with the metric's own reductions (concatenation), as DDP's sync
    assert {k: float(v) for k, v in merged.compute().items()} == {"exact_match": 100.0, "f1": 100.0}
    # rank 0 alone sees only "san" for example 3: EM 0, F1 2/3 (P 1, R 1/2); example 4 is right
    alone = {k: float(v) for k, v in ranks[0].compute().items()}
    assert alone == {"exact_match": 50.0, "f1": pytest.approx(100 * (2 / 3 + 1) / 2)}
