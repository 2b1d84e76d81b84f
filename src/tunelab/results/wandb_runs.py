"""W&B runs -> records, so that tables can be built without the run folders.

tunelab's W&B runs hold the flat resolved config (``"task.name"``, ``"seed"``, ``"run_dir"``) plus
``params/*`` in ``run.config``, and in ``run.summary`` every number of the run's ``metrics.json`` under
the keys the run-folder collector gives them (``val/macro_f1``, ``test_mismatched/accuracy``,
``params/trainable_pct``, ``train/train_time_s``: see ``tunelab.loggers.log_summary``). Runs logged
before that hold only the test metrics, as ``final/<metric>``, and the last logged values. Only these
attributes of a public-API run are read: ``id``, ``state``, ``config``, ``summary``, ``group``,
``job_type``, ``tags`` and ``scan_history()``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, Record, ResultsError, flatten, is_number

STATES = {"finished": COMPLETED, "crashed": FAILED, "failed": FAILED, "killed": FAILED}
# The sections of metrics.json (test_<name>: further test sets), as summary key prefixes
SUMMARY_SECTIONS = ("val/", "test/", "test_", "params/", "train/", "eval/", "data/", "distributed/")


def wandb_api() -> Any:
    """``wandb.Api()``, the public API client."""
    try:
        import wandb
    except ImportError as err:
        raise ResultsError("--from-wandb needs wandb: pip install wandb") from err
    return wandb.Api()


def collect_wandb(path: str, api: Any = None) -> list[Record]:
    """The records of the runs of W&B project ``path`` (``entity/project``)."""
    api = api or wandb_api()
    try:
        runs = list(api.runs(path))
    except Exception as err:  # the client raises many kinds (network, auth, unknown project)
        raise ResultsError(f"could not list the W&B runs of {path}: {err}") from err
    if not runs:
        raise ResultsError(f"no runs in W&B project {path}")
    return [wandb_record(run, f"wandb:{path}/{run.id}") for run in runs]


def wandb_record(run: Any, source: str) -> Record:
    """One W&B run as a record: the summary's ``metrics.json`` sections as they are, config ``params/*``
    and, for older runs, ``final/<m>`` -> ``test/<m>``."""
    config = {k: v for k, v in flatten(dict(run.config)).items() if not k.startswith("_")}
    metrics = {k: float(config.pop(k)) for k in list(config) if k.startswith("params/") and is_number(config[k])}
    for key, value in ("group", run.group), ("job_type", run.job_type), ("tags", tuple(run.tags or ())):
        config.setdefault(key, value)

    summary = dict(run.summary.items())
    metrics.update({k: float(v) for k, v in summary.items() if k.startswith(SUMMARY_SECTIONS) and "/" in k and is_number(v)})
    for key, value in summary.items():
        if key.startswith("final/") and is_number(value):
            metrics.setdefault(f"test/{key.removeprefix('final/')}", float(value))

    status = STATES.get(run.state, INCOMPLETE)
    if status == COMPLETED and not any(k.startswith("test/") for k in metrics):
        status, note = INCOMPLETE, "state finished, no test metrics in the summary"
    else:
        note = "" if status == COMPLETED else f"state {run.state}"
    return Record(source=source, config=config, metrics=metrics, status=status, note=note, history=lambda: history(run))


def history(run: Any) -> pd.DataFrame:
    """Every logged row of ``run``, the step as Lightning gave it in ``step``."""
    frame = pd.DataFrame(list(run.scan_history()))
    return frame.rename(columns={"trainer/global_step": "step"})
