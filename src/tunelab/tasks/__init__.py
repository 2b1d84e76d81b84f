"""LightningModules: ``TaskModule`` holds what all tasks share; one subclass per task family."""

from tunelab.tasks.base import TaskModule
from tunelab.tasks.classification import SequenceClassificationModule
from tunelab.tasks.regression import SequenceRegressionModule

__all__ = ["SequenceClassificationModule", "SequenceRegressionModule", "TaskModule"]
