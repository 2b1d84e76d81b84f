"""What every task module shares: backbone loading, tuning, optimizer, schedule, metric logging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from tunelab.batch import model_inputs, token_counts
from tunelab.exported import export_info, write_export_info
from tunelab.models import load_model
from tunelab.trusted import OPTIMIZER, TUNING, check_remote_code, check_tree
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.recipes import Recipes

# Forward arguments of decoders' loss passes: no key/value cache is needed, and one filled in the forward
# pass would change what activation checkpointing (trainer=fsdp) recomputes in the backward pass.
NO_KV_CACHE = {"use_cache": False}
# While ``load_from_checkpoint`` builds a module: the checkpoint file its hyperparameters come from, and
# whether its caller allows a model that runs its repository's code.
_FROM_CHECKPOINT: ContextVar[tuple[str, bool] | None] = ContextVar("tunelab_from_checkpoint", default=None)


def in_row_order(values: list[Any], order: list[int]) -> list[Any]:
    """Undo an evaluation order: ``values[i]`` belongs to row ``order[i]``."""
    out: list[Any] = [None] * len(order)
    for value, row in zip(values, order, strict=True):
        out[row] = value
    return out


def label_config(labels: Sequence[str]) -> dict[str, Any]:
    """Config kwargs of a head over ``labels`` (names in id order): exports name their classes."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class TaskModule(L.LightningModule):
    """Base of all task modules.

    A task family subclasses it: it sets ``auto_model_class``, takes its own arguments in ``__init__``
    (saved as hyperparameters with the others, read back through ``self.hparams``) and implements
    ``config_kwargs`` (e.g. ``num_labels``), ``build_metrics`` and ``update_metrics``. This class
    saves the hyperparameters and builds the model once every ``__init__`` argument is known.

    Args:
        model: a ``model/*.yaml`` config (name_or_path, revision, from_scratch, ...).
        optimizer: a ``torch.optim`` config with ``_target_``; gets the trainable parameters.
        scheduler: ``{name, warmup_ratio, warmup_steps}``, names as in ``transformers.get_scheduler``.
        tuning: a tuning strategy config with ``_target_``.
    """

    auto_model_class: type
    #: ``__init__`` arguments not saved as hyperparameters (objects the datamodule passes, e.g. a tokenizer).
    unsaved_arguments: tuple[str, ...] = ()

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        tuning: Mapping[str, Any] | None = None,
        pretrained: str | None = None,
    ):
        super().__init__()
        if (loading := _FROM_CHECKPOINT.get()) is not None:  # the arguments were read from a file
            file, remote_code_allowed = loading
            check_tree(tuning, TUNING, file, "hyper_parameters.tuning")
            check_tree(optimizer, OPTIMIZER, file, "hyper_parameters.optimizer")
            check_remote_code(_plain(model), file, remote_code_allowed, "load_from_checkpoint(..., trust_remote_code=True)")
        self.model_cfg = _plain(model)
        self.optimizer_cfg = _plain(optimizer)
        self.scheduler_cfg = _plain(scheduler) or {"name": "constant"}
        self.tuning_cfg = _plain(tuning)
        self.tuning: TuningStrategy = instantiate(tuning) if tuning else TuningStrategy()
        self.pretrained = pretrained
        self.model: nn.Module
        # from every __init__ in the class chain: Lightning reads the callers' frames
        self.save_hyperparameters(ignore=list(self.unsaved_arguments), logger=False)
        self.build(**self.config_kwargs())

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool = True, trust_remote_code: bool = False,
                             **kwargs: Any) -> TaskModule:
        """Lightning's, reading the checkpoint as data: ``weights_only=True`` unless asked otherwise, and the
        hyperparameters it builds the module from checked as a run folder's files are (``tunelab.trusted``)."""
        token = _FROM_CHECKPOINT.set((str(checkpoint_path), trust_remote_code))
        try:
            return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict,
                                                weights_only=weights_only, **kwargs)
        finally:
            _FROM_CHECKPOINT.reset(token)

    def build(self, **config_kwargs: Any) -> None:
        """Load the backbone + head with ``config_kwargs`` and apply the tuning strategy (or load a tuned export)."""
        self.config_kwargs = config_kwargs
        if self.pretrained:
            self.model = self.tuning.load_pretrained(self.auto_model_class, self.model_cfg, Path(self.pretrained), **config_kwargs)
        else:
            backbone: PreTrainedModel = load_model(self.auto_model_class, self.model_cfg,
                                                   load_kwargs=self.tuning.load_kwargs(), **config_kwargs)
            backbone.train()  # from_pretrained returns eval mode; Lightning keeps the mode it finds (no dropout)
            self.model = self.tuning.apply(backbone)
        self.tuning_modules = nn.ModuleDict(self.tuning.modules())  # e.g. a teacher: moves with the module
        # L2-SP's starting weights, gradual unfreezing's depths (off for a loaded export: it is not trained)
        self.recipes = Recipes(self.model) if self.pretrained else Recipes(self.model, self.tuning.l2sp, self.tuning.unfreeze)
        metrics = self.build_metrics()
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.extra_test_metrics = nn.ModuleDict()  # further test sets (test_<name>), made at test time
        self._test_names = ["test"]
        self.test_samples: dict[str, list[dict[str, Any]]] = {}  # per test set: rows for samples/<set>.jsonl
        self.eval_losses = nn.ModuleDict()  # per stage (val, test, test_<name>): the mean loss over examples

    # --- task hooks ------------------------------------------------------------------------------
    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the model config (``num_labels``, ``id2label``, ...), from ``self.hparams``;
        a family may also refuse a model here whose head exists but would train the wrong thing."""
        return {}

    def build_metrics(self) -> MetricCollection:
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        """Add one evaluation batch to ``metrics``; ``stage`` is ``val``, ``test`` or ``test_<name>``."""
        raise NotImplementedError

    def metric_values(self, metrics: MetricCollection) -> dict[str, float]:
        return {k: v.item() for k, v in metrics.compute().items()}

    # --- steps -----------------------------------------------------------------------------------
    #: Extra keyword arguments of the loss forward pass (decoders: ``use_cache=False``).
    forward_kwargs: Mapping[str, Any] = {}

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**model_inputs(batch), **self.forward_kwargs)

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training objective; strategies such as distillation extend it."""
        return self.tuning.loss(outputs, batch, outputs.loss)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=token_counts(batch)[0])
        return loss

    def on_train_start(self) -> None:
        self.recipes.check(self.trainer, self.model)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        for name, value in self.recipes.before_optimizer_step(self.model, self.trainer).items():  # tuning.unfreeze, l2sp
            self.log(name, value, on_step=True, on_epoch=False)

    def configure_model(self) -> None:
        """Shard the model where the strategy does (``trainer=fsdp``: ``tunelab.fsdp.FSDP2Strategy``), before the
        optimizer is built; Lightning calls this before every fit, validate and test, and sharding is done once."""
        from tunelab.fsdp import FSDP2Strategy

        trainer = self._trainer  # None in load_from_checkpoint, which calls this hook too
        if trainer is not None and isinstance(trainer.strategy, FSDP2Strategy):
            trainer.strategy.parallelize(self.model)

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, stage: str) -> None:
        outputs = self(batch)
        # A metric, not a tensor: across ranks, the mean over all examples (sync_dist would average the
        # ranks' means, which differs when ranks hold different numbers of examples).
        if stage not in self.eval_losses:
            self.eval_losses[stage] = MeanMetric().to(self.device)
        size = token_counts(batch)[0]  # examples (a packed batch is one row)
        self.eval_losses[stage].update(outputs.loss.detach(), weight=size)
        self.log(f"{stage}/loss", self.eval_losses[stage], on_epoch=True, batch_size=size, add_dataloader_idx=False,
                 metric_attribute=f"eval_losses.{stage}")
        self.update_metrics(metrics, outputs, batch, stage)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def _test_set(self, name: str) -> MetricCollection:
        return self.test_metrics if name == "test" else self.extra_test_metrics[name]

    def _metrics_to_device(self) -> None:
        """Metric states on the training device, where collectives such as NCCL need them: a sharding strategy
        may place only the parameters, leaving torchmetrics' states (text metrics' lists) on the CPU."""
        device = self.trainer.strategy.root_device
        for metrics in (self.val_metrics, self.test_metrics, self.extra_test_metrics, self.eval_losses):
            metrics.to(device)

    def on_validation_epoch_start(self) -> None:
        self._metrics_to_device()

    def on_test_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._test_names = list(getattr(datamodule, "test_splits", None) or ["test"])
        self.test_samples = {}
        for name in self._test_names[1:]:
            if name not in self.extra_test_metrics:
                self.extra_test_metrics[name] = self.build_metrics().clone(prefix=f"{name}/")
        self._metrics_to_device()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._test_names[dataloader_idx]
        self._eval_step(batch, self._test_set(name), name)

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        # float64 tensors: Lightning stores a logged Python float as float32 (53.333332 for 32 of 60 in percent)
        values = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in self.metric_values(metrics).items()}
        self.log_dict(values, prog_bar=False, add_dataloader_idx=False)
        metrics.reset()

    def on_fit_start(self) -> None:
        # A validate() before fit() resets metric states inside inference mode; fit validates
        # under no_grad, where updating such tensors in place fails (MatthewsCorrCoef does).
        self.val_metrics.reset()
        for loss in self.eval_losses.values():
            loss.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        for name in self._test_names:
            self._log_epoch_metrics(self._test_set(name))

    def add_samples(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """Keep example outputs of a test set (e.g. source, reference, generated text); the run
        writes them to ``samples/<test set>.jsonl``."""
        if self.trainer.testing:
            self.test_samples.setdefault(stage, []).extend(rows)

    def predictions_table(self, batches: list[dict[str, torch.Tensor]], order: list[int]) -> dict[str, list]:
        """Columns to write beside the input rows; ``order[i]`` is the row of the i-th prediction."""
        raise NotImplementedError

    # --- optimisation ----------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, float]:
        """Counts of the tuned model (a distillation teacher is not counted)."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / max(total, 1)}

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        clipping = bool(getattr(trainer, "gradient_clip_val", None))
        mixed = isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision)
        optimizer = self.tuning.optimizer(self.optimizer_cfg, self.model, clipping_under_mixed_precision=clipping and mixed)
        sched = self.scheduler_cfg
        total = int(self.trainer.estimated_stepping_batches)
        warmup = sched.get("warmup_steps")
        if warmup is None:
            warmup = round((sched.get("warmup_ratio") or 0.0) * total)
        scheduler = get_scheduler(sched["name"], optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.tuning.on_optimizer_step(self.model, self.trainer)

    # --- export ----------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """The tuned model in the strategy's format (Hugging Face for full fine-tuning) + ``tunelab.json``."""
        path = Path(path)
        self.tuning.save(self.model, path, tokenizer)
        info = export_info(self.auto_model_class, self.model_cfg, self.tuning_cfg, self.config_kwargs)
        write_export_info(path, {**info, **self.export_extras()})

    def export_extras(self) -> dict[str, Any]:
        """What else ``tunelab.json`` must hold to predict as this run did (plain data, never code)."""
        return {}
