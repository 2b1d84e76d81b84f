"""Datasets to batches: loading (hub or local files), validation, tokenization, batching."""

from tunelab.data.base import TaskDataModule
from tunelab.data.classification import ClassificationDataModule

__all__ = ["ClassificationDataModule", "TaskDataModule"]
