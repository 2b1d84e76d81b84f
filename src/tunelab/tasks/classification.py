"""Sequence classification (single texts and text pairs) with ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForSequenceClassification

from tunelab.batch import model_inputs
from tunelab.metrics.classification import classification_metrics, flatten_metrics
from tunelab.tasks.base import in_row_order
from tunelab.tasks.loss import ClassifierModule, cross_entropy


class SequenceClassificationModule(ClassifierModule):
    """A classifier over ``labels`` (names in id order); label names go into the exported config.
    Trains on ``task.loss`` (``tunelab.tasks.loss``)."""

    auto_model_class = AutoModelForSequenceClassification

    def __init__(self, labels: Sequence[str], model: Mapping[str, Any], optimizer: Mapping[str, Any], **kwargs: Any):
        super().__init__(labels=labels, model=model, optimizer=optimizer, **kwargs)

    def forward(self, batch: dict[str, Any]) -> Any:
        """Logits and their plain cross-entropy (``val/loss``, ``test/loss``), from a forward pass without labels:
        training takes ``task.loss``'s cross-entropy of the logits, and AdaLoRA, given no loss by the model, adds
        its regulariser to that in its strategy's ``loss``."""
        outputs = self.model(**model_inputs(batch, targets=False), **self.forward_kwargs)
        if "labels" in batch:
            outputs["loss"] = cross_entropy(outputs.logits, batch["labels"])
        return outputs

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
