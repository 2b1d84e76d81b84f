"""Task metric collections (torchmetrics), synced across devices by torchmetrics itself."""

from tunelab.metrics.classification import classification_metrics, flatten_metrics
from tunelab.metrics.entities import EntityMetrics, entities, infer_scheme
from tunelab.metrics.lm import Perplexity, lm_metrics
from tunelab.metrics.qa import SquadScore, qa_metrics
from tunelab.metrics.regression import regression_metrics
from tunelab.metrics.seq2seq import generation_metrics

__all__ = ["EntityMetrics", "Perplexity", "SquadScore", "classification_metrics", "entities", "flatten_metrics", "generation_metrics", "infer_scheme", "lm_metrics", "qa_metrics", "regression_metrics"]
