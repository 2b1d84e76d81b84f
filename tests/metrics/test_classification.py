"""Classification metrics against values computed by hand."""

import pytest
import torch

from tunelab.metrics import classification_metrics, flatten_metrics


def test_metrics_match_hand_computed_values_across_batches() -> None:
    # 3 classes; targets and predictions fed in two batches (as across steps or devices).
    target = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
    preds = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1]
    metrics = classification_metrics(3)
    metrics.update(torch.tensor(preds[:6]), torch.tensor(target[:6]))
    metrics.update(torch.tensor(preds[6:]), torch.tensor(target[6:]))
    values = flatten_metrics(metrics.compute(), ["a", "b", "c"])
    # per class: tp, fp, fn -> class 0: 2,1,1  class 1: 2,1,1  class 2: 3,1,1
    p = [2 / 3, 2 / 3, 3 / 4]
    r = [2 / 3, 2 / 3, 3 / 4]
    f1 = [2 * pi * ri / (pi + ri) for pi, ri in zip(p, r, strict=True)]
    assert values["accuracy"] == pytest.approx(7 / 10)
    assert values["precision"] == pytest.approx(sum(p) / 3)
    assert values["recall"] == pytest.approx(sum(r) / 3)
    assert values["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert [values[f"f1_per_class/{c}"] for c in "abc"] == pytest.approx(f1)


def test_macro_f1_counts_a_never_predicted_class_as_zero() -> None:
    metrics = classification_metrics(2)
    metrics.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]))
    values = flatten_metrics(metrics.compute(), ["neg", "pos"])
    f1_neg = 2 * (2 / 4) * 1 / ((2 / 4) + 1)
    assert values["f1_per_class/pos"] == 0.0
    assert values["macro_f1"] == pytest.approx(f1_neg / 2)


def test_matthews_correlation_matches_the_formula() -> None:
    target = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 0, 1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    metrics = classification_metrics(2)
    metrics.update(torch.tensor(preds), torch.tensor(target))
    assert metrics.compute()["mcc"].item() == pytest.approx(expected)
