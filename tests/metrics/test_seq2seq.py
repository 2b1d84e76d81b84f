"""Generation metrics against hand-computed ROUGE and BLEU values, and the punkt check."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.metrics.seq2seq import generation_metric_values, generation_metrics, update_generation_metrics


def score(preds: list[str], refs: list[str], names: tuple[str, ...] = ("rouge", "sacrebleu", "chrf")) -> dict[str, float]:
    metrics = generation_metrics(names).clone(prefix="val/")
    update_generation_metrics(metrics, preds, refs, torch.tensor([len(p.split()) for p in preds]))
    return generation_metric_values(metrics.compute())


def test_rouge_matches_hand_counts() -> None:
    # unigrams: 5 of 6 shared (the x2, cat, on, mat); bigrams: 3 of 5 (the cat, on the, the mat);
    # longest common subsequence: "the cat on the mat", 5 of 6.
    values = score(["the cat sat on the mat"], ["the cat is on the mat"], ("rouge",))
    assert values["val/rouge1"] == pytest.approx(5 / 6)
    assert values["val/rouge2"] == pytest.approx(3 / 5)
    assert values["val/rougeL"] == pytest.approx(5 / 6)
    assert values["val/gen_len"] == 6 and set(values) == {"val/rouge1", "val/rouge2", "val/rougeL", "val/gen_len"}


def test_rouge_averages_over_examples_and_ignores_case_and_punctuation() -> None:
    values = score(["The Cat!", "dog"], ["the cat", "a bird"], ("rouge",))
    assert values["val/rouge1"] == pytest.approx((1.0 + 0.0) / 2)


def test_sacrebleu_matches_hand_computed_value() -> None:
    # n-gram precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty (the output is longer).
    values = score(["the cat sat on the mat today"], ["the cat sat on the mat"], ("sacrebleu",))
    assert values["val/sacrebleu"] == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25, rel=1e-5)
    # all precisions 1, brevity penalty exp(1 - 7/6); corpus-level: counts add up over updates
    values = score(["the cat sat on the mat"], ["the cat sat on the mat today"], ("sacrebleu",))
    assert values["val/sacrebleu"] == pytest.approx(math.exp(1 - 7 / 6), rel=1e-5)


def test_chrf_bounds() -> None:
    # character n-gram F-score: identical texts score 1, texts without a shared character 0
    assert score(["the cat is on the mat"], ["the cat is on the mat"], ("chrf",))["val/chrf"] == pytest.approx(1.0)
    assert score(["xyz"], ["abc"], ("chrf",))["val/chrf"] == pytest.approx(0.0)


def test_states_are_tensors_that_sync_across_ranks() -> None:
    metrics = generation_metrics(["rouge", "sacrebleu", "chrf"])
    update_generation_metrics(metrics, ["a b c d"], ["a b c d"], torch.tensor([4]))
    for metric in metrics.values():
        for name in metric._defaults:
            state = getattr(metric, name)
            assert isinstance(state, torch.Tensor) or all(isinstance(x, torch.Tensor) for x in state), name


def test_unknown_names_and_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"task.module.metrics: unknown \['bleurt'\]"):
        generation_metrics(["rouge", "bleurt"])
    with pytest.raises(ConfigError, match=r"task\.module\.rouge_keys"):
        generation_metrics(["rouge"], rouge_keys=["rouge9"])


def test_rouge_lsum_without_punkt_fails_at_start_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk

    def missing(resource: str, *args: object, **kwargs: object) -> None:
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", missing)
    with pytest.raises(ConfigError, match=r"python -m nltk.downloader punkt_tab.*drop rougeLsum"):
        generation_metrics(["rouge"], rouge_keys=["rouge1", "rougeLsum"])
    generation_metrics(["rouge"], rouge_keys=["rouge1", "rougeL"])  # no punkt needed
