"""Classification metrics: accuracy, macro F1 / precision / recall, per-class F1, Matthews correlation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
)


def classification_metrics(num_classes: int) -> MetricCollection:
    """Metrics over predicted class ids and targets; ``f1_per_class`` is a vector (its entry for the
    positive class is GLUE's F1 on MRPC/QQP); ``mcc`` is GLUE's CoLA metric."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1_per_class": MulticlassF1Score(num_classes, average="none"),
            "mcc": MulticlassMatthewsCorrCoef(num_classes),
        }
    )


def flatten_metrics(values: Mapping[str, torch.Tensor], class_names: Sequence[str]) -> dict[str, float]:
    """Scalars stay; vectors of per-class values become ``<name>/<class>`` keys."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if value.ndim == 0:
            flat[key] = value.item()
        else:
            for name, v in zip(class_names, value.tolist(), strict=True):
                flat[f"{key}/{name}"] = v
    return flat
