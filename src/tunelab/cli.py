"""Command-line entry points (Hydra mains)."""

from __future__ import annotations

# First, before the heavy imports (Hydra, and through it omegaconf): Slurm's SIGUSR1 during start-up,
# imports and data loading must not end the job (its default action). Stdlib only.
from tunelab import slurm_signal

slurm_signal.catch_if_slurm()

import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tunelab.config import CONFIG_DIR  # noqa: E402
from tunelab.errors import find_tunelab_error  # noqa: E402

log = logging.getLogger("tunelab")

# Loggers whose INFO lines are for the user (Hydra: the jobs of a multirun); everything else shows
# its warnings and errors on the console and the rest in train.log only.
CONSOLE_INFO_LOGGERS = ("tunelab", "hydra", "hydra_plugins", "__main__")
# Deprecations inside the libraries, about their own code: nothing a user can change.
KNOWN_DEPRECATIONS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # Lightning 2.6 on torch >= 2.10
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),  # peft 0.21 wrapping a transformers 5 model
)


class ConsoleFilter(logging.Filter):
    """What the console shows of a run's log (``train.log`` keeps every line): INFO and above from
    ``CONSOLE_INFO_LOGGERS``, warnings and errors from the other libraries, each of their messages once
    (Lightning repeats some, e.g. its ``srun`` hint and "Restoring states" before validate and test)."""

    def __init__(self) -> None:
        super().__init__()
        self._shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] in CONSOLE_INFO_LOGGERS:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        if message in self._shown:
            return False
        self._shown.add(message)
        return True


class _DropLitLoggerTip(logging.Filter):
    """Lightning advertises its cloud logger at every Trainer construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` as one log line (``logging.captureWarnings`` adds the source line and a blank one)."""
    logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)


def quiet_libraries() -> None:
    """Route the libraries' output through the run's logging (Hydra's console and ``train.log``) once,
    without their own handlers, ads, font-cache notes, known deprecations and progress bars in logs."""
    # torchmetrics imports pyplot, and matplotlib notes (re)building its font cache; tunelab-train draws nothing
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    for message, category in KNOWN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.showwarning = _log_warning  # the remaining warnings go to train.log as well

    import datasets
    import huggingface_hub
    import lightning  # noqa: F401  # attaches its own console handler on import: removed below
    import transformers

    transformers.logging.set_verbosity_error()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # Hydra's handlers print these
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLitLoggerTip())
    if not sys.stdout.isatty():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()



def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train(cfg: DictConfig) -> float | None:
    """``python train.py [group=option ...] [key=value ...]``; returns the monitored metric."""
    quiet_libraries()
    from tunelab.train import run

    try:
        metrics = run(cfg)
    except Exception as err:
        cause = find_tunelab_error(err)
        if cause is None:
            raise
        log.error("%s", cause)
        if _multirun():
            raise  # Hydra records this job as failed and runs the others (an exit would end the whole sweep)
        sys.exit(1)
    return metrics["val"].get(cfg.task.monitor.removeprefix("val/"))
