"""Regression metrics (STS-B): Pearson and Spearman correlation, mean squared error."""

from __future__ import annotations

from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef


def regression_metrics() -> MetricCollection:
    return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()})
