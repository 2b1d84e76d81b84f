"""The training loss of the classifiers (sequence and token classification): cross-entropy with ``task.loss``'s
label smoothing and class weights.

``ClassifierModule`` is the task-module base of both heads: it trains on ``ClassificationLoss`` over the logits
(the model runs without labels, so AdaLoRA adds its regulariser in ``tuning.loss``), while the forward pass's own
``loss`` (``val/loss``, ``test/loss``) stays the plain cross-entropy, unweighted and unsmoothed, which compares
across recipes. ``class_weights: balanced`` is counted from the training split when the trainer fits.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.batch import IGNORE_INDEX
from tunelab.errors import ConfigError
from tunelab.tasks.base import TaskModule, label_config

log = logging.getLogger(__name__)

KEY = "task.loss"
OPTIONS = {"label_smoothing": 0.0, "class_weights": None}
BALANCED = "balanced"


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy (in float32) of ``logits`` ``(..., classes)`` over the positions of ``labels`` that are
    not ``IGNORE_INDEX``; with ``weight``, the mean weighted by each target's class weight (sum w_y nll / sum w_y)."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(),
                           weight=None if weight is None else weight.float(),  # bf16 under precision=bf16-true
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_loss_options(options: Mapping[str, Any] | None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """``task.loss`` with its defaults filled in, or a ConfigError naming the key that cannot work; the number
    of class weights is checked against ``labels`` (``task.data.labels``) where they are known."""
    options = dict(options or {})
    for key in options:
        if key not in OPTIONS:
            close = difflib.get_close_matches(str(key), list(OPTIONS), n=1)
            hint = f"did you mean {KEY}.{close[0]}?" if close else f"it takes {', '.join(OPTIONS)}"
            raise ConfigError(f"{KEY}.{key} is not a loss option; {hint}")
    smoothing = options.get("label_smoothing", 0.0)
    if not (_is_number(smoothing) and 0 <= smoothing < 1):
        raise ConfigError(f"{KEY}.label_smoothing must be a number in [0, 1) (0: off), got {smoothing!r}")
    weights = options.get("class_weights")
    known = f"task.data.labels has {len(labels)}: {list(labels)}" if labels is not None else ""
    if weights is not None and weights != BALANCED:
        if isinstance(weights, str) or not isinstance(weights, Sequence):
            raise ConfigError(f"{KEY}.class_weights must be null, '{BALANCED}' or a list of one weight per label "
                              f"(in task.data.labels order), got {weights!r}")
        weights = list(weights)
        bad = [w for w in weights if not (_is_number(w) and w > 0)]
        if bad:
            raise ConfigError(f"{KEY}.class_weights must be positive numbers, one per label"
                              f"{f' ({known})' if known else ''}; got {bad[0]!r} in {weights}")
        if labels is not None and len(weights) != len(labels):
            raise ConfigError(f"{KEY}.class_weights has {len(weights)} weights but needs one per label, "
                              f"{len(labels)} in task.data.labels order: {list(labels)}")
    return {"label_smoothing": float(smoothing), "class_weights": weights}


def training_label_ids(train: datasets.Dataset) -> np.ndarray:
    """The label ids the training loss sees: every target of the ``labels`` column but ``IGNORE_INDEX``
    (token classification: the labelled sub-tokens of every window)."""
    column = train.select_columns(["labels"]).with_format("arrow")[:].column("labels")
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    ids = column.to_numpy()
    return ids[ids != IGNORE_INDEX]


def balanced_weights(label_ids: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """scikit-learn's ``balanced`` weights, n_samples / (n_classes * count_c); a ConfigError for a class absent
    from ``label_ids``."""
    counts = np.bincount(label_ids, minlength=len(labels))
    absent = [labels[i] for i in np.flatnonzero(counts == 0)]
    if absent:
        raise ConfigError(f"{KEY}.class_weights={BALANCED}: class {', '.join(map(repr, absent))} has no example in the "
                          f"training split, so its weight n_samples / (n_classes * count) is infinite; give a list of "
                          f"weights (one per label, in task.data.labels order) or drop the class from task.data.labels")
    return counts.sum() / (len(labels) * counts)


class ClassificationLoss(nn.Module):
    """Cross-entropy of a head over ``labels`` (names in id order) with ``task.loss``'s ``options``.

    The class weights are a buffer (moved with the module, not saved in checkpoints); ``balanced`` ones are
    counted by ``fit`` from the training split.
    """

    weight: torch.Tensor | None

    def __init__(self, labels: Sequence[str], options: Mapping[str, Any] | None = None):
        super().__init__()
        checked = check_loss_options(options, labels)
        self.labels = [str(label) for label in labels]
        self.label_smoothing: float = checked["label_smoothing"]
        self.class_weights: str | list[float] | None = checked["class_weights"]
        given = isinstance(self.class_weights, list)
        self.register_buffer("weight", torch.tensor(self.class_weights, dtype=torch.float32) if given else None,
                             persistent=False)

    def fit(self, train: datasets.Dataset | None, device: torch.device) -> None:
        """Count ``balanced`` weights (on ``device``) from ``train``, the training features; log the loss trained on."""
        if self.class_weights == BALANCED:
            if train is None:
                raise ConfigError(f"{KEY}.class_weights={BALANCED} counts the training split's labels: fit with the "
                                  "task's datamodule")
            self.weight = torch.from_numpy(balanced_weights(training_label_ids(train), self.labels)).float().to(device)
        if self.weight is not None or self.label_smoothing:
            shown = "none" if self.weight is None else ", ".join(
                f"{label}: {w:.4g}" for label, w in zip(self.labels, self.weight.tolist(), strict=True))
            log.info("training loss (%s): cross-entropy, label smoothing %g, class weights %s%s", KEY,
                     self.label_smoothing, "(balanced) " if self.class_weights == BALANCED else "", shown)

    @property
    def plain(self) -> bool:
        """No smoothing and no weights: the plain cross-entropy the forward pass already computes."""
        return not self.label_smoothing and self.class_weights is None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_weights == BALANCED and self.weight is None:
            raise RuntimeError(f"{KEY}.class_weights={BALANCED}: the weights are counted when the trainer fits "
                               "(ClassificationLoss.fit), which has not happened")
        return cross_entropy(logits, labels, self.weight, self.label_smoothing)


class ClassifierModule(TaskModule):
    """Base of the task modules whose head scores ``labels`` (names in id order, which go into the exported
    config) and trains on ``criterion``.

    Args:
        loss: ``task.loss``: ``label_smoothing`` (0: off) and ``class_weights`` (null, ``balanced`` or one
            weight per label).
    """

    def __init__(self, labels: Sequence[str], model: Mapping[str, Any], optimizer: Mapping[str, Any],
                 loss: Mapping[str, Any] | None = None, **kwargs: Any):
        criterion = ClassificationLoss(labels, loss)  # a ConfigError before the model is built
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        self.criterion = criterion

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.hparams.labels]

    def config_kwargs(self) -> dict[str, Any]:
        return label_config(self.labels)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            datamodule = getattr(self.trainer, "datamodule", None)
            self.criterion.fit(getattr(datamodule, "features", {}).get("train"), self.device)

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``task.loss``'s cross-entropy of the logits, and what the tuning strategy adds."""
        task_loss = outputs.loss if self.criterion.plain else self.criterion(outputs.logits, batch["labels"])
        return self.tuning.loss(outputs, batch, task_loss)
