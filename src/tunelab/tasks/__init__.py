"""LightningModules: ``TaskModule`` holds what all tasks share; one subclass per task family."""

from tunelab.tasks.base import TaskModule
from tunelab.tasks.classification import SequenceClassificationModule

__all__ = ["SequenceClassificationModule", "TaskModule"]
