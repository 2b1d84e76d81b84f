"""Datasets to batches: loading (hub or local files), validation, tokenization, batching."""

from tunelab.data.base import TaskDataModule
from tunelab.data.classification import ClassificationDataModule, RegressionDataModule

__all__ = ["ClassificationDataModule", "RegressionDataModule", "TaskDataModule"]
