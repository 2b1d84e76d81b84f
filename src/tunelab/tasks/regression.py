"""Sequence regression (single texts and text pairs, e.g. STS-B): one output, MSE loss."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForSequenceClassification

from tunelab.batch import model_inputs
from tunelab.metrics.regression import regression_metrics
from tunelab.tasks.base import TaskModule, in_row_order


class SequenceRegressionModule(TaskModule):
    """Predicts one number per input (``problem_type="regression"``: MSE loss)."""

    auto_model_class = AutoModelForSequenceClassification

    def config_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def build_metrics(self) -> MetricCollection:
        return regression_metrics()

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, torch.Tensor], stage: str) -> None:
        metrics.update(outputs.logits.squeeze(-1).float(), batch["labels"].float())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"prediction": self.model(**model_inputs(batch, targets=False)).logits.squeeze(-1).float()}

    def predictions_table(self, batches: list[dict[str, torch.Tensor]], order: list[int]) -> dict[str, list]:
        return {"prediction": in_row_order(torch.cat([b["prediction"] for b in batches]).tolist(), order)}
