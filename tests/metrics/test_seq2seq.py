"""Generation metrics against hand-computed ROUGE and BLEU values, chrF / chrF++ against sacrebleu,
and the punkt check."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import CHRF as SacreCHRF

from tests.helpers import compose_train
from tunelab.errors import ConfigError
from tunelab.metrics.chrf import CHRF
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


CHRF_NAMES = {"chrf": 0, "chrf++": 2}  # metric name -> sacrebleu's word_order


def sacrebleu_chrf(preds: list[str], refs: list[str], name: str) -> float:
    """The oracle: sacrebleu's corpus score, from its 0-100 scale to ours."""
    return SacreCHRF(word_order=CHRF_NAMES[name]).corpus_score(preds, [refs]).score / 100


CRAFTED = {
    # an empty output still counts its reference's n-grams: recall falls (torchmetrics: 1.0)
    "empty output in a corpus": (["", "the cat sat on the mat"], ["the cat sat on the mat"] * 2),
    "empty output alone": ([""], ["the cat sat on the mat"]),
    "empty reference": (["the cat", "a dog"], ["", "a dog"]),
    "both empty": ([""], [""]),
    "one-character words": (["a b c d", "x"], ["a b d c", "x"]),
    "one character against a word": (["a"], ["abc def"]),
    "unicode": (["naïve café 東京は晴れ 🙂", "Straße"], ["naive café 東京は雨 🙂🙂", "Strasse"]),
    "combining marks and case": (["cafe\u0301 Über", "ÉCOLE"], ["café über", "école"]),
    "punctuation split off words": (["(hi) there, friend!", "\"quoted\" ... end."], ["hi (there) friend !", "quoted ... end ."]),
    "whitespace kinds": (["a\tb\u00a0c  d\n"], ["a b c d"]),
    "identical": (["the cat is on the mat"], ["the cat is on the mat"]),
    "nothing shared": (["xyz"], ["abc"]),
}


@pytest.mark.parametrize("name", CHRF_NAMES)
@pytest.mark.parametrize("case", CRAFTED)
def test_chrf_equals_sacrebleu_on_crafted_pairs(case: str, name: str) -> None:
    preds, refs = CRAFTED[case]
    assert score(preds, refs, (name,))[f"val/{name}"] == pytest.approx(sacrebleu_chrf(preds, refs, name), abs=1e-12)


def random_corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["the", "cat", "sat", "on", "mat", "a", "I", "(dog)", "dog,", "é", "über", "東京", "!", "...", "x"]
    sentence = lambda: " ".join(rng.choices(vocab, k=rng.randint(0, 9)))  # noqa: E731
    return [sentence() for _ in range(n)], [sentence() for _ in range(n)]


@pytest.mark.parametrize("name", CHRF_NAMES)
def test_chrf_is_corpus_level_over_updates_and_ranks(name: str) -> None:
    """Statistics add up over ``update`` calls, and over ranks whose states are merged with the
    metric's own reductions (DDP's: a sum of integer counts): both equal sacrebleu on the whole corpus."""
    preds, refs = random_corpus(60, seed=3)
    expected = sacrebleu_chrf(preds, refs, name)
    ranks = [CHRF(word_order=CHRF_NAMES[name]) for _ in range(2)]
    for start in range(0, 60, 7):  # batches of 7, alternating between the two ranks
        ranks[start // 7 % 2].update(preds[start : start + 7], [[r] for r in refs[start : start + 7]])
    assert all(state.dtype == torch.long for r in ranks for state in r.metric_state.values())
    merged = ranks[0].clone()
    merged.merge_state(ranks[1])
    assert merged.compute().item() == pytest.approx(expected, abs=1e-12)
    alone = CHRF(word_order=CHRF_NAMES[name])
    for start in range(0, 60, 7):
        alone.update(preds[start : start + 7], refs[start : start + 7])  # one reference string per sentence
    assert alone.compute().item() == pytest.approx(expected, abs=1e-12)
    assert ranks[0].compute().item() != pytest.approx(expected, abs=1e-6)  # one rank alone is not the corpus


@pytest.mark.parametrize("word_order,char_order,beta", [(0, 6, 2), (2, 6, 2), (1, 4, 1)])
def test_chrf_with_several_references_equals_sacrebleu(word_order: int, char_order: int, beta: int) -> None:
    preds, refs = random_corpus(40, seed=5)
    _, other_refs = random_corpus(40, seed=6)
    metric = CHRF(word_order=word_order, char_order=char_order, beta=beta)
    metric.update(preds, [list(pair) for pair in zip(refs, other_refs, strict=True)])
    oracle = SacreCHRF(char_order=char_order, word_order=word_order, beta=beta).corpus_score(preds, [refs, other_refs])
    assert metric.compute().item() == pytest.approx(oracle.score / 100, abs=1e-12)


def test_chrf_of_an_empty_corpus_is_zero_like_sacrebleu_on_zero_counts() -> None:
    """sacrebleu's ``corpus_score([], ...)`` raises IndexError; on all-zero statistics it gives 0."""
    for word_order in (0, 2):
        metric = CHRF(word_order=word_order)
        metric.update([], [])
        zero_stats = [0] * 3 * (6 + word_order)
        assert metric.compute().item() == SacreCHRF(word_order=word_order)._compute_score_from_stats(zero_stats).score == 0


def test_chrf_pp_name_survives_a_hydra_override(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "task=parallel", f"task.data.source.data_files.train={tmp_path}/x.csv",
                        "task.module.metrics=[sacrebleu,chrf,chrf++]", "task.monitor=val/chrf++")
    assert list(cfg.task.module.metrics) == ["sacrebleu", "chrf", "chrf++"]
    assert cfg.callbacks.model_checkpoint.monitor == "val/chrf++"
    values = score(["the cat sat"], ["the cat sat down"], tuple(cfg.task.module.metrics))
    assert set(values) == {"val/sacrebleu", "val/chrf", "val/chrf++", "val/gen_len"}


def test_states_are_tensors_that_sync_across_ranks() -> None:
    metrics = generation_metrics(["rouge", "sacrebleu", "chrf", "chrf++"])
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
