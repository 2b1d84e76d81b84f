"""Regression metrics against values computed by hand."""

import pytest
import torch

from tunelab.metrics import regression_metrics


def test_pearson_spearman_mse_across_batches() -> None:
    preds = [1.0, 2.0, 4.0, 3.0, 6.0]
    target = [1.5, 1.0, 3.5, 4.0, 5.0]
    n = len(preds)
    mp, mt = sum(preds) / n, sum(target) / n
    cov = sum((p - mp) * (t - mt) for p, t in zip(preds, target, strict=True))
    pearson = cov / (sum((p - mp) ** 2 for p in preds) * sum((t - mt) ** 2 for t in target)) ** 0.5
    # ranks: preds 1,2,4,3,5 ; target 2,1,3,4,5 -> d^2 = 1+1+1+1+0
    spearman = 1 - 6 * 4 / (n * (n * n - 1))
    mse = sum((p - t) ** 2 for p, t in zip(preds, target, strict=True)) / n
    metrics = regression_metrics()
    metrics.update(torch.tensor(preds[:2]), torch.tensor(target[:2]))
    metrics.update(torch.tensor(preds[2:]), torch.tensor(target[2:]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["pearson"] == pytest.approx(pearson, rel=1e-5)
    assert values["spearman"] == pytest.approx(spearman, rel=1e-5)
    assert values["mse"] == pytest.approx(mse, rel=1e-6)
