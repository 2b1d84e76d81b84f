"""The training recipe, top to bottom: ``run(cfg)`` is everything ``python train.py`` does."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from tunelab.callbacks import AtomicCheckpointIO, EvalStats, TrainStats, progress_callbacks
from tunelab.config_checks import check_against_model, check_config
from tunelab.data.base import TaskDataModule
from tunelab.distributed import check_strategy, gather_eval_rows, preflight, rank_info
from tunelab.errors import ConfigError, unwrapped_errors
from tunelab.fsdp import FSDP2Strategy, local_parameter_count, strategy_summary
from tunelab.hardware import hardware_overrides
from tunelab.hub import check_hub
from tunelab.identity import (
    check_same_data,
    checkpoint_problem,
    data_fingerprint,
    read_completed,
    resume_checkpoint,
)
from tunelab.io import atomic_write_dir
from tunelab.loggers import log_summary
from tunelab.model_card import write_model_card
from tunelab.models import load_tokenizer
from tunelab.requeue import Requeued, ResumeCallback, slurm_managed
from tunelab.run_folder import RunFolder, describe_owner, environment
from tunelab.search import TrialPruned
from tunelab.tasks.base import TaskModule

if TYPE_CHECKING:
    from tunelab.search.report import TrialReporter

log = logging.getLogger(__name__)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """``{"model.name": "minilm", ...}``: the resolved config as flat keys for loggers."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def build_datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> TaskDataModule:
    """The task's datamodule (not set up yet); an evaluation-only run (``train=false``) trains on nothing, so it
    makes no augmented copies (``task.data.augment`` off)."""
    if not cfg.get("train", True):
        overrides.setdefault("augment", None)
    with unwrapped_errors():
        return instantiate(cfg.task.data, tokenizer=tokenizer, seed=cfg.seed, **overrides, _recursive_=False)


def build_module(cfg: DictConfig, datamodule: TaskDataModule, **overrides: Any) -> TaskModule:
    """The task module: backbone + head from ``model``, tuned by ``tuning``, for the set-up data."""
    with unwrapped_errors():
        return instantiate(
            cfg.task.module,
            **{**datamodule.module_kwargs(), **overrides},
            model=cfg.model,
            optimizer=cfg.optimizer,
            scheduler=cfg.scheduler,
            tuning=cfg.tuning,
            _recursive_=False,
            _convert_="all",  # plain containers in the checkpoint's hparams
        )


def validation_off(cfg: DictConfig) -> bool:
    """``trainer.limit_val_batches=0``: train without validation, then test the final weights."""
    limit = cfg.trainer.get("limit_val_batches")
    return limit is not None and float(limit) == 0


def last_validation(trainer: L.Trainer, best: str | None) -> dict[str, float] | None:
    """The metrics of fit's last validation when it scored the weights of ``best`` (the best checkpoint was saved
    at the last optimizer step, which the last validation followed): validating them again would repeat it."""
    if not best or not Path(best).is_file():  # a sharded folder: validate it
        return None
    saved_at = torch.load(best, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    if saved_at != trainer.global_step:
        return None
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")} or None


def _callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The ``callbacks/`` configs, less those that cannot work in this run: without validation nothing
    selects a best checkpoint or stops early (``last.ckpt`` still saves every epoch); without a logger
    there is nowhere to log learning rates."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    built = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if validation_off(cfg):
        built = [c for c in built if not isinstance(c, EarlyStopping)
                 and not (isinstance(c, ModelCheckpoint) and c.monitor is not None)]
    if not has_logger:
        built = [c for c in built if not isinstance(c, LearningRateMonitor)]
    return built


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback],
                  before_requeue: Callable[[str], None] | None = None) -> L.Trainer:
    """The Lightning Trainer from ``trainer/``, ``callbacks/`` and ``logger/`` configs on this machine's
    hardware (``tunelab.hardware``). FSDP2 (``trainer=fsdp``) shards the module when Lightning calls its
    ``configure_model``."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = _callbacks(cfg, has_logger=bool(loggers)) + callbacks
    progress, show_bar = progress_callbacks(cfg.progress, cfg.trainer.get("log_every_n_steps") or 50)
    # Requeue on SIGUSR1 at a batch boundary (tunelab.requeue), not inside Lightning's signal handler.
    slurm = slurm_managed()
    plugins: list[Any] = [AtomicCheckpointIO()]
    if slurm:
        plugins.append(SLURMEnvironment(auto_requeue=False))
    resume = ResumeCallback(requeue_signal=signal.SIGUSR1 if slurm else None)
    resume.before_requeue = before_requeue  # runs before `scontrol requeue`, which ends the job's processes
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, resume, *progress],
        logger=loggers or False,
        enable_progress_bar=show_bar,
        plugins=plugins,
        default_root_dir=cfg.paths.output_dir,
        **hardware_overrides(cfg.trainer),
    )
    # `trainer.deterministic` also turns on torch's NaN fill of every new uninitialized tensor, a guard against
    # kernels that read memory they never wrote. It costs ~2% of a MiniLM step on a CPU (916 vs 897 ms, README
    # "Benchmarks") and changes no loss (tests/test_train.py); deterministic kernels stay on.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def trial_reporter(cfg: DictConfig) -> TrialReporter | None:
    """For a search trial's training run (``search.trial``, set by the sweeper): the callback that reports its
    validation curve to the trial and stops it when the study's pruner says so (``tunelab.search.report``)."""
    search = cfg.get("search")
    if not cfg.get("train", True) or not search or search.get("trial") is None:
        return None
    from tunelab.search.report import TrialReporter  # imports Optuna, the `sweep` extra

    return TrialReporter(search, str(cfg.task.monitor), cfg.paths.output_dir)


def _split_metrics(results: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(f"{prefix}/"): v for k, v in results.items()}


def resume_from(cfg: DictConfig, folder: RunFolder) -> str | None:
    """The checkpoint to start from: ``ckpt_path``, else (``resume=auto|must``) the run folder's newest
    loadable one."""
    if cfg.get("ckpt_path"):
        given = str(cfg.ckpt_path)
        if given not in LIGHTNING_CKPT_NAMES and "://" not in given:  # Lightning's names and remote paths: its own
            problem = checkpoint_problem(Path(given)) if Path(given).exists() else "no such file"
            if problem:
                raise ConfigError(f"ckpt_path={given}: {problem}")
        return given
    if not cfg.get("train", True):
        return None  # evaluation only: nothing to resume
    resume = cfg.get("resume", "auto")
    found = resume_checkpoint(folder.path) if resume != "never" else None
    if found is None and resume == "must":
        raise ConfigError(f"resume=must, but {folder.path} has no checkpoint (checkpoints/last.ckpt or hpc_ckpt_*.ckpt); "
                          "check run_id and paths.root_dir, or use resume=auto")
    return str(found) if found else None


LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself


def check_train_mode(cfg: DictConfig) -> None:
    """``train=false`` evaluates without training; a training run that would take no step is refused,
    rather than exporting untrained weights as if they were tuned."""
    if not cfg.get("train", True):
        return
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if cfg.trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0 trains nothing, and the run would export untrained weights as its result. "
                "For an evaluation-only run (a zero-shot baseline, or a checkpoint with ckpt_path=...) use train=false")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune, evaluate the best checkpoint, export; returns what ``metrics.json`` holds.

    The run folder follows from the config (``run_id``): with ``resume=auto`` a run that completed
    there is not trained again, and an unfinished one resumes from its newest checkpoint. One process
    at a time owns the folder (``RunFolder.lock``); a second one on it stops at once, naming the first.
    """
    check_strategy(cfg.trainer)  # keys of the first FSDP: named with their FSDP2 counterparts
    check_config(cfg)  # values and keys, before any work
    folder = RunFolder(cfg.paths.output_dir)
    check_train_mode(cfg)
    for warning in preflight(cfg.trainer):
        if rank_zero_only.rank == 0:
            log.warning("Slurm preflight: %s", warning)
    with folder.lock() if rank_zero_only.rank == 0 else contextlib.nullcontext() as previous:
        return _run_locked(cfg, folder, previous)


def _run_locked(cfg: DictConfig, folder: RunFolder, previous_owner: dict[str, Any] | None) -> dict[str, Any]:
    fingerprint = data_fingerprint(OmegaConf.to_container(cfg.task.data.get("source") or {}, resolve=True))
    reuse = cfg.get("resume", "auto") != "never"
    if reuse:
        check_same_data(folder.path, fingerprint)
    done = read_completed(folder.path) if reuse else None
    if done is not None:
        if rank_zero_only.rank == 0:
            log.info("run %s already completed: not training it again (its metrics.json is the result). "
                     "resume=never trains it afresh in a new folder.", folder.path)
        return done
    if rank_zero_only.rank == 0 and previous_owner and folder.status() == "running":
        log.warning("the previous attempt on %s (%s) ended without recording how (killed, or out of disk space)",
                    folder.path, describe_owner(previous_owner))
    ckpt_path = resume_from(cfg, folder)
    if ckpt_path and cfg.get("train", True) and rank_zero_only.rank == 0:
        log.info("resuming %s from %s", folder.path, ckpt_path)
    if rank_zero_only.rank == 0:
        folder.create(cfg, resumed_from=ckpt_path, data=fingerprint)
    try:
        metrics = _fit_and_test(cfg, folder, ckpt_path)
    except Requeued as requeued:
        if rank_zero_only.rank == 0:  # written before `scontrol requeue` already; this keeps its final reason
            folder.set_status("requeued", reason=requeued.message)
        raise
    except TrialPruned as pruned:  # a search trial stopped by its pruner: the sweeper tells the study
        if rank_zero_only.rank == 0:
            folder.set_status("pruned", reason=str(pruned))
        raise
    except BaseException as err:
        if rank_zero_only.rank == 0:
            try:
                folder.set_status("failed", error=f"{type(err).__name__}: {err}")
            except OSError as status_err:  # e.g. disk full: the original error is the one to report
                log.error("could not record the failure in %s: %s", folder.status_file, status_err)
        raise
    if rank_zero_only.rank == 0:
        for hpc in folder.path.glob("hpc_ckpt_*.ckpt"):  # requeue checkpoints: last.ckpt supersedes them
            shutil.rmtree(hpc) if hpc.is_dir() else hpc.unlink()  # sharded (FSDP) checkpoints are folders
        folder.set_status("completed")
    return metrics


def _fit_and_test(cfg: DictConfig, folder: RunFolder, ckpt_path: str | None = None) -> dict[str, Any]:
    check_hub()
    L.seed_everything(cfg.seed, workers=True)

    tokenizer = load_tokenizer(cfg.model)
    check_against_model(cfg, tokenizer)  # lengths within the model's positions
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.setup("fit")
    if rank_zero_only.rank == 0 and datamodule.augmentation.sample:  # task.data.augment's copies, a sample
        folder.write_augment_sample(datamodule.augmentation.sample)
    module = build_module(cfg, datamodule)
    params = module.parameter_counts()
    log.info(
        "parameters: %s trainable of %s (%.2f%%)", f"{params['trainable']:,}", f"{params['total']:,}", params["trainable_pct"]
    )

    stats, eval_stats = TrainStats(), EvalStats()
    reporter = trial_reporter(cfg)
    trainer = build_trainer(cfg, [stats, eval_stats, *([reporter] if reporter else [])],
                            before_requeue=lambda message: folder.set_status("requeued", reason=message))
    for logger in trainer.loggers:
        logger.log_hyperparams({**flat_config(cfg), "run_dir": str(folder.path), **{f"params/{k}": v for k, v in params.items()}})

    training = bool(cfg.get("train", True))
    succeeded = False
    try:
        if training:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if reporter:
                reporter.raise_if_pruned()  # neither tested nor exported: its checkpoints and curve stay
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            best = None if validation_off(cfg) else best or None  # None: evaluate the weights in memory
        else:  # evaluation only: the model as loaded, or the checkpoint given as ckpt_path
            log.info("train=false: evaluating %s without training", ckpt_path or "the model as loaded")
            best = ckpt_path
        started = time.perf_counter()
        reused = last_validation(trainer, best) if training and not validation_off(cfg) else None
        if validation_off(cfg):
            log.info("validation is off (trainer.limit_val_batches=0): testing the final weights")
            val = {}
        elif reused is not None:
            log.info("validation metrics of %s: those of fit's last validation, which scored these weights", best)
            val = reused
        else:
            val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
        # The weights in memory are best's when fit's last validation scored them: test them as they are, without
        # reading the checkpoint (weights and optimizer state) back into memory.
        tested_ckpt = None if reused is not None else best
        tested = {k: v for results in trainer.test(module, datamodule=datamodule, ckpt_path=tested_ckpt, verbose=False)
                  for k, v in results.items()}
        eval_seconds = time.perf_counter() - started
        # collectives: every rank calls them
        ranks = rank_info(stats.total_samples, local_params=local_parameter_count(module.model))
        sharded = isinstance(trainer.strategy, FSDP2Strategy)
        weights = trainer.strategy.full_state_dict() if sharded and training else None  # rank 0: whole weights
        samples = gather_eval_rows(module.test_samples)  # each rank scored its share of every test set

        metrics = {
            "run_name": cfg.run_name,
            "task": cfg.task.name,
            "model": cfg.model.name,
            "tuning": cfg.tuning.name,
            "seed": cfg.seed,
            "best_checkpoint": best,
            "val": _split_metrics(val, "val"),
            **{name: _split_metrics({k: v for k, v in tested.items() if k.startswith(f"{name}/")}, name)
               for name in datamodule.test_splits},
            "params": params,
            "train": {**(stats.summary() if training else {"trained": False}), "epochs": trainer.current_epoch,
                      "steps": trainer.global_step, "eval_time_s": round(eval_seconds, 2)},
            "eval": eval_stats.summary(),
            "data": {split: len(ds) for split, ds in datamodule.examples.items()},
            **datamodule.data_report.metrics(),  # data/<split>: task.data.quality's counts
            "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision),
            "distributed": {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                            "strategy": type(trainer.strategy).__name__, **strategy_summary(trainer.strategy),
                            "ranks": ranks},
            "torch_threads": torch.get_num_threads(),
        }
        if trainer.is_global_zero:
            if training:  # an evaluation-only run exports nothing: its model is the one it loaded
                exported = module if weights is None else unsharded_copy(cfg, datamodule, weights)

                def export(path: Path) -> None:
                    exported.save_pretrained(path, tokenizer)
                    write_model_card(path, cfg, metrics, environment())

                atomic_write_dir(folder.model_dir, export)
            for name, rows in samples.items():
                folder.write_samples(name, rows)
            folder.write_metrics(metrics)
            for logger in trainer.loggers:
                logger.log_metrics({f"final/{k}": v for k, v in metrics["test"].items()}, step=trainer.global_step)
            log_summary(trainer.loggers, metrics)
            log.info("test: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if "/" not in k))
            log.info("run folder: %s", folder.path)
        succeeded = True
    finally:
        finish_loggers(trainer, exit_code=0 if succeeded else 1)
    return metrics


def unsharded_copy(cfg: DictConfig, datamodule: TaskDataModule, state_dict: dict[str, Any]) -> TaskModule:
    """A fresh module on the CPU holding ``state_dict``: what an FSDP2 run exports, since its own module
    holds only this rank's shards of the weights."""
    copy = build_module(cfg, datamodule)
    copy.load_state_dict(state_dict)
    return copy


def finish_loggers(trainer: L.Trainer, exit_code: int) -> None:
    """Close W&B runs, so that the next run in this process (multirun, tests) starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=exit_code)
