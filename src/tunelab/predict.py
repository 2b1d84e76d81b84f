"""Score a finished run on new data: predictions to a file, and metrics when labels are present.

    python -m tunelab.predict runs/bbc-news-minilm-full/<time> new.csv [--output preds.csv]
    tunelab-predict <run dir> <data file> [--text-column TEXT] [--label-column LABEL] ...

Each task family's column flags (``--<task.data key>``) come from the columns it describes.

The run folder is read as data: only tunelab's own classes are built from its config.yaml and
model/tunelab.json, and a model that runs its repository's code needs --trust-remote-code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import datasets
import lightning as L
from hydra.utils import instantiate

from tunelab.data.base import Column, families
from tunelab.errors import TunelabError, find_tunelab_error
from tunelab.exported import EXPORT_INFO, check_weights, is_run_folder, read_export_info
from tunelab.io import atomic_write_json
from tunelab.models import load_tokenizer, remote_code
from tunelab.run_folder import RunFolder
from tunelab.trusted import OPTIMIZER, TASK, check_remote_code, read_config

log = logging.getLogger("tunelab.predict")


def predict(
    run_dir: str | Path,
    data_file: str | Path,
    output: str | Path | None = None,
    columns: dict[str, str | None] | None = None,
    encoding: str = "utf-8",
    batch_size: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Predict ``data_file`` with the model exported in ``run_dir``; returns metrics (if labelled)
    and the output paths. ``columns`` overrides the run's data column names, e.g. ``{"text_column": "body"}``.
    ``trust_remote_code`` allows a model whose config sets ``trust_remote_code: true``."""
    folder = RunFolder(run_dir)
    if not is_run_folder(folder.path):
        raise TunelabError(f"{run_dir} is not a finished run folder (config.yaml and model/{EXPORT_INFO} are needed)")
    cfg = read_config(folder.config, {"task": TASK, "optimizer": OPTIMIZER})
    info = read_export_info(folder.model_dir)
    check_remote_code(info.get("model"), folder.model_dir / EXPORT_INFO, trust_remote_code, "--trust-remote-code")
    check_weights(folder.model_dir, info)
    tokenizer = load_tokenizer({"name_or_path": str(folder.model_dir), "trust_remote_code": remote_code(info["model"])})

    make_datamodule = instantiate(cfg.task.data, _partial_=True, _recursive_=False)
    data_cfg = {**cfg.task.data, **(columns or {})}
    source = make_datamodule.func.prediction_source(str(data_file), data_cfg, encoding)
    data_kwargs = {**(columns or {}), **make_datamodule.func.prediction_kwargs(
        data_cfg, source.splits["test"].column_names, info)}
    datamodule = make_datamodule(
        tokenizer=tokenizer, source=source, splits={"test": "test"}, max_samples={}, augment=None,  # trains on nothing
        eval_batch_size=batch_size or cfg.task.data.eval_batch_size, **data_kwargs,
    )
    datamodule.setup("predict")
    module = instantiate(
        cfg.task.module, **datamodule.module_kwargs(), model=info["model"], optimizer=cfg.optimizer,
        tuning=info["tuning"], pretrained=str(folder.model_dir), _recursive_=False, _convert_="all",
    )
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=sys.stdout.isatty(),
                        enable_model_summary=False, enable_checkpointing=False)
    batches = trainer.predict(module, datamodule=datamodule)
    order = datamodule.eval_order("test")
    table = module.predictions_table(batches, order)

    output = Path(output) if output else Path(data_file).with_suffix(".predictions" + datamodule.prediction_suffix)
    rows = datamodule.examples["test"]
    rows = rows.remove_columns([c for c in ("labels",) if c in rows.column_names])
    for name, values in table.items():
        rows = rows.add_column(name, values)
    rows.to_json(output) if output.suffix in (".json", ".jsonl") else rows.to_csv(output, index=False)
    result: dict[str, Any] = {"predictions": str(output), "rows": len(rows)}
    if datamodule.has_targets:
        metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        result["metrics"] = {k.removeprefix("test/"): v for k, v in metrics.items()}
        metrics_path = output.with_suffix(".metrics.json")
        atomic_write_json(metrics_path, {"run": str(folder.path), "data": str(data_file), **result})
        result["metrics_file"] = str(metrics_path)
    return result


def add_column_flags(parser: argparse.ArgumentParser) -> list[str]:
    """``--<key>`` for every column a task family describes (``TaskDataModule.columns``); returns the keys."""
    described: dict[str, tuple[Column, list[str]]] = {}
    for family in families():
        for column in family.columns:
            described.setdefault(column.key, (column, []))[1].append(family.__name__.removesuffix("DataModule"))
    for key, (column, users) in described.items():
        parser.add_argument(column.flag, dest=key, help=f"{column.help}, if it differs from the run's "
                                                        f"(task.data.{key}; {', '.join(dict.fromkeys(users))})")
    return list(described)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunelab-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder written by train.py")
    parser.add_argument("data_file", help="csv, tsv, json, jsonl or parquet file to predict")
    parser.add_argument("--output", "-o", help="where to write predictions (.csv or .jsonl); default <data>.predictions.csv")
    names = add_column_flags(parser)
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the data file")
    parser.add_argument("--batch-size", type=int, help="examples per batch")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="load a model that runs its repository's own Python code (model.trust_remote_code=true)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    datasets.disable_progress_bars()
    columns = {name: getattr(args, name) for name in names if getattr(args, name)}
    try:
        result = predict(args.run_dir, args.data_file, args.output, columns, args.encoding, args.batch_size,
                         args.trust_remote_code)
    except Exception as err:
        cause = find_tunelab_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
