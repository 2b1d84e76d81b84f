"""Slurm's requeue signal (SIGUSR1), caught from process start to exit.

Slurm sends SIGUSR1 ``<lead>`` s before the time limit (``--signal=SIGUSR1@<lead>``; also ``scancel --signal=USR1``)
at whatever the job is doing then: importing torch, loading data, training, testing, exporting. The default
action of SIGUSR1 ends the process, so ``tunelab.cli`` calls ``catch_if_slurm()`` when it is imported; this module imports
only the standard library (importing Lightning takes seconds, ten on a busy node). The handler only records
the request. ``tunelab.requeue.ResumeCallback`` honours it at the next training batch boundary (one that came
before training: at the first batch) and clears it. One that no training batch followed (it came during test
or export) is logged at exit: the run went on to its end, and a finished run needs no requeue.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
from collections.abc import Mapping
from types import FrameType

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1
_received = False


def slurm_managed(env: Mapping[str, str] | None = None) -> bool:
    """Whether Slurm started this process (``srun`` in a batch job; not an interactive allocation, job name
    ``bash`` or ``interactive``): the test of Lightning's ``SLURMEnvironment.detect()``, without importing it."""
    env = os.environ if env is None else env
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def catch(signum: int = REQUEUE_SIGNAL) -> None:
    """Record ``signum`` as a requeue request, from now until the process exits (idempotent)."""
    if signal.getsignal(signum) is not _on_signal:
        signal.signal(signum, _on_signal)


def catch_if_slurm() -> bool:
    """``catch()`` the requeue signal when Slurm manages this process; returns whether it does."""
    if slurm_managed():
        catch()
        return True
    return False


def received() -> bool:
    """Whether a requeue signal came that no requeue has honoured yet."""
    return _received


def clear() -> None:
    """The requeue is done (its checkpoint saved): forget the signal."""
    global _received
    _received = False


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _received
    _received = True  # only a flag: the checkpoint waits for a batch boundary, and a handler must not do I/O


@atexit.register
def _report_unhonoured() -> None:
    if _received and os.environ.get("SLURM_PROCID", "0") == "0":
        log.warning("Slurm's requeue signal (%s) came when no training batch followed (training was over: test or "
                    "export; or the run stopped before training): not requeued, the process went on to its end",
                    REQUEUE_SIGNAL.name)
