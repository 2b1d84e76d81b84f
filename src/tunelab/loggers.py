"""Loggers that survive a resumed run (requeue, crash + ``resume=auto``), and the run's results in W&B."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from tunelab.results.collect import flatten_metrics


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``; this one keeps its rows up to the step
    where logging resumes (rows after it were logged by the interrupted attempt and are logged again)."""

    def _check_log_dir_exists(self) -> None:
        self._earlier: list[dict[str, Any]] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self._earlier = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self._earlier and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in self._earlier if row.get("step") in (None, "") or int(float(row["step"])) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._earlier = []
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` continues across the attempts of a resumed run."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class QuietWandbLogger(WandbLogger):
    """``WandbLogger`` without the ``anonymous=None`` it always passes, which wandb >= 0.19 answers on every
    run with a warning that the setting has no effect."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


@rank_zero_only
def log_summary(loggers: Iterable[Logger], metrics: dict[str, Any]) -> None:
    """Put every number of ``metrics.json`` into the summary of the W&B run, under the keys that
    ``tunelab-results`` reads from run folders (``val/macro_f1``, ``test_mismatched/accuracy``,
    ``params/trainable_pct``, ``train/train_time_s``, ...), so that ``--from-wandb`` builds the same tables."""
    summary = flatten_metrics(metrics)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(summary)
