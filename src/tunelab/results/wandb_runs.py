"""W&B runs -> records, so that tables can be built without the run folders.

tunelab's W&B runs hold the flat resolved config (``"task.name"``, ``"seed"``, ``"run_dir"``) plus
``params/*`` in ``run.config``, and the test metrics of the best checkpoint as ``final/<metric>`` in
``run.summary``. Only these attributes of a public-API run are read: ``id``, ``state``, ``config``,
``summary``, ``group``, ``job_type``, ``tags`` and ``scan_history()``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tunelab.results.records import COMPLETED, FAILED, INCOMPLETE, Record, ResultsError, flatten, is_number

STATES = {"finished": COMPLETED, "crashed": FAILED, "failed": FAILED, "killed": FAILED}
SUMMARY_SECTIONS = ("val/", "test/", "train/")


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
    """One W&B run as a record: ``final/<m>`` -> ``test/<m>``, config ``params/*`` -> metrics."""
    config = {k: v for k, v in flatten(dict(run.config)).items() if not k.startswith("_")}
    metrics = {k: float(config.pop(k)) for k in list(config) if k.startswith("params/") and is_number(config[k])}
    for key, value in ("group", run.group), ("job_type", run.job_type), ("tags", tuple(run.tags or ())):
        config.setdefault(key, value)

    summary = dict(run.summary.items())
    metrics.update({k: float(v) for k, v in summary.items() if k.startswith(SUMMARY_SECTIONS) and is_number(v)})
    final = {f"test/{k.removeprefix('final/')}": float(v) for k, v in summary.items() if k.startswith("final/") and is_number(v)}
    metrics.update(final)

    status = STATES.get(run.state, INCOMPLETE)
    if status == COMPLETED and not final:
        status, note = INCOMPLETE, "state finished, no final/ metrics in the summary"
    else:
        note = "" if status == COMPLETED else f"state {run.state}"
    return Record(source=source, config=config, metrics=metrics, status=status, note=note, history=lambda: history(run))


def history(run: Any) -> pd.DataFrame:
    """Every logged row of ``run``, the step as Lightning gave it in ``step``."""
    frame = pd.DataFrame(list(run.scan_history()))
    return frame.rename(columns={"trainer/global_step": "step"})
