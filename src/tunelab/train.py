"""The training recipe, top to bottom: ``run(cfg)`` is everything ``python train.py`` does."""

from __future__ import annotations

import logging
import shutil
import signal
import time
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from tunelab.callbacks import AtomicCheckpointIO, TrainStats, progress_callbacks
from tunelab.data.base import TaskDataModule
from tunelab.distributed import build_strategy, check_strategy, gathered_state_dict, preflight, rank_info
from tunelab.errors import ConfigError, unwrapped_errors
from tunelab.hub import check_hub
from tunelab.identity import read_completed, resume_checkpoint
from tunelab.io import atomic_write_dir
from tunelab.models import load_tokenizer
from tunelab.requeue import Requeued, ResumeCallback, slurm_managed
from tunelab.run_folder import RunFolder
from tunelab.tasks.base import TaskModule

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
    """The task's datamodule (not set up yet)."""
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


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], module: TaskModule | None = None) -> L.Trainer:
    """The Lightning Trainer from ``trainer/``, ``callbacks/`` and ``logger/`` configs; an FSDP
    strategy wraps ``module``'s transformer blocks (see ``tunelab.distributed.build_strategy``)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c] + callbacks
    progress, show_bar = progress_callbacks(cfg.progress, cfg.trainer.get("log_every_n_steps") or 50)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    strategy = cfg.trainer.get("strategy", "auto")
    if module is not None:
        strategy = build_strategy(strategy, module.model)
    # Requeue on SIGUSR1 at a batch boundary (tunelab.requeue), not inside Lightning's signal handler.
    slurm = slurm_managed()
    plugins: list[Any] = [AtomicCheckpointIO()]
    if slurm:
        plugins.append(SLURMEnvironment(auto_requeue=False))
    resume = ResumeCallback(requeue_signal=signal.SIGUSR1 if slurm else None)
    return instantiate(
        cfg.trainer,
        strategy=strategy,
        callbacks=[*callbacks, resume, *progress],
        logger=loggers or False,
        enable_progress_bar=show_bar,
        plugins=plugins,
        default_root_dir=cfg.paths.output_dir,
    )


def _split_metrics(results: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(f"{prefix}/"): v for k, v in results.items()}


def resume_from(cfg: DictConfig, folder: RunFolder) -> str | None:
    """The checkpoint to start from: ``ckpt_path``, else (``resume=auto|must``) the run folder's newest."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    resume = cfg.get("resume", "auto")
    found = resume_checkpoint(folder.path) if resume != "never" else None
    if found is None and resume == "must":
        raise ConfigError(f"resume=must, but {folder.path} has no checkpoint (checkpoints/last.ckpt or hpc_ckpt_*.ckpt); "
                          "check run_id and paths.root_dir, or use resume=auto")
    return str(found) if found else None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune, evaluate the best checkpoint, export; returns what ``metrics.json`` holds.

    The run folder follows from the config (``run_id``): with ``resume=auto`` a run that completed
    there is not trained again, and an unfinished one resumes from its newest checkpoint.
    """
    folder = RunFolder(cfg.paths.output_dir)
    check_strategy(cfg.trainer)
    for warning in preflight(cfg.trainer):
        if rank_zero_only.rank == 0:
            log.warning("Slurm preflight: %s", warning)
    done = read_completed(folder.path) if cfg.get("resume", "auto") != "never" else None
    if done is not None:
        if rank_zero_only.rank == 0:
            log.info("run %s already completed: not training it again (its metrics.json is the result). "
                     "resume=never trains it afresh in a new folder.", folder.path)
        return done
    ckpt_path = resume_from(cfg, folder)
    if ckpt_path and rank_zero_only.rank == 0:
        log.info("resuming %s from %s", folder.path, ckpt_path)
    if rank_zero_only.rank == 0:
        folder.create(cfg, resumed_from=ckpt_path)
    try:
        metrics = _fit_and_test(cfg, folder, ckpt_path)
    except Requeued as requeued:
        if rank_zero_only.rank == 0:
            log.info("%s", requeued)
            folder.set_status("requeued", reason=requeued.message)
        raise
    except BaseException as err:
        if rank_zero_only.rank == 0:
            folder.set_status("failed", error=f"{type(err).__name__}: {err}")
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
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    params = module.parameter_counts()
    log.info(
        "parameters: %s trainable of %s (%.2f%%)", f"{params['trainable']:,}", f"{params['total']:,}", params["trainable_pct"]
    )

    stats = TrainStats()
    trainer = build_trainer(cfg, [stats], module)
    for logger in trainer.loggers:
        logger.log_hyperparams({**flat_config(cfg), "run_dir": str(folder.path), **{f"params/{k}": v for k, v in params.items()}})

    succeeded = False
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best = best or None  # None: evaluate the weights in memory
        started = time.perf_counter()
        val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
        tested = {k: v for results in trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
                  for k, v in results.items()}
        eval_seconds = time.perf_counter() - started
        ranks = rank_info(stats.samples)  # a collective: every rank calls it

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
            "train": {**stats.summary(), "epochs": trainer.current_epoch, "steps": trainer.global_step,
                      "eval_time_s": round(eval_seconds, 2)},
            "data": {split: len(ds) for split, ds in datamodule.examples.items()},
            "device": str(trainer.strategy.root_device),
            "distributed": {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
                            "strategy": type(trainer.strategy).__name__, "ranks": ranks},
            "torch_threads": torch.get_num_threads(),
        }
        weights = gathered_state_dict(trainer)  # FSDP: the shards gathered to rank 0 (every rank takes part)
        if trainer.is_global_zero:
            exported = module if weights is None else unsharded_copy(cfg, datamodule, weights)
            atomic_write_dir(folder.model_dir, lambda path: exported.save_pretrained(path, tokenizer))
            for name, rows in module.test_samples.items():
                folder.write_samples(name, rows)
            folder.write_metrics(metrics)
            for logger in trainer.loggers:
                logger.log_metrics({f"final/{k}": v for k, v in metrics["test"].items()}, step=trainer.global_step)
            log.info("test: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if "/" not in k))
            log.info("run folder: %s", folder.path)
        succeeded = True
    finally:
        finish_loggers(trainer, exit_code=0 if succeeded else 1)
    return metrics


def unsharded_copy(cfg: DictConfig, datamodule: TaskDataModule, state_dict: dict[str, Any]) -> TaskModule:
    """A fresh module on the CPU holding ``state_dict``: what an FSDP run exports, since its own module
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
