"""Task metric collections (torchmetrics), synced across devices by torchmetrics itself."""

from tunelab.metrics.classification import classification_metrics, flatten_metrics
from tunelab.metrics.regression import regression_metrics

__all__ = ["classification_metrics", "flatten_metrics", "regression_metrics"]
