"""Sequence classification (single texts and text pairs) with ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForSequenceClassification

from tunelab.batch import model_inputs
from tunelab.metrics.classification import classification_metrics, flatten_metrics
from tunelab.tasks.base import TaskModule, in_row_order, label_config


class SequenceClassificationModule(TaskModule):
    """A classifier over ``labels`` (names in id order); label names go into the exported config."""

    auto_model_class = AutoModelForSequenceClassification

    def __init__(self, labels: Sequence[str], model: Mapping[str, Any], optimizer: Mapping[str, Any], **kwargs: Any):
        super().__init__(model=model, optimizer=optimizer, **kwargs)

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.hparams.labels]

    def config_kwargs(self) -> dict[str, Any]:
        return label_config(self.labels)

    def build_metrics(self) -> MetricCollection:
        return classification_metrics(len(self.labels))

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, torch.Tensor], stage: str) -> None:
        metrics.update(outputs.logits.argmax(-1), batch["labels"])

    def metric_values(self, metrics: MetricCollection) -> dict[str, float]:
        return flatten_metrics(metrics.compute(), self.labels)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self.model(**model_inputs(batch, targets=False)).logits.float().softmax(-1)
        confidence, prediction = probs.max(-1)
        return {"prediction": prediction, "confidence": confidence, "probs": probs}

    def predictions_table(self, batches: list[dict[str, torch.Tensor]], order: list[int]) -> dict[str, list]:
        prediction = torch.cat([b["prediction"] for b in batches]).tolist()
        confidence = torch.cat([b["confidence"] for b in batches]).tolist()
        return {
            "prediction": in_row_order([self.labels[i] for i in prediction], order),
            "confidence": in_row_order(confidence, order),
        }
