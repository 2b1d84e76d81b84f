"""Print the Markdown table and sample rows of one bbc-headlines run, read from its run folder.

    python results/bbc-headlines/render.py RUN_DIR "WALL TIME" [N_SAMPLES]

RUN_DIR holds metrics.json and samples/test.jsonl; the wall time is the one `/usr/bin/time` gave for
the whole command (the run folder knows fit and eval times, not process start-up).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def main(run_dir: Path, wall: str, n_samples: int = 10) -> None:
    m = json.loads((run_dir / "metrics.json").read_text())
    test, val, train = m["test"], m["val"], m["train"]
    print("| test ROUGE-1 | test ROUGE-2 | test ROUGE-L | test loss | mean output tokens | val ROUGE-L | steps "
          "| train time | eval time | wall time (whole command) | peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {test['rouge1']:.4f} | {test['rouge2']:.4f} | {test['rougeL']:.4f} | {test['loss']:.3f} | "
          f"{test['gen_len']:.1f} | {val['rougeL']:.4f} | {train['steps']} | {train['train_time_s']:.0f} s | "
          f"{train['eval_time_s']:.0f} s | {wall} | {train['peak_rss_mb']:.0f} MB |")
    print()
    curve = pd.read_csv(run_dir / "logs" / "metrics.csv").dropna(subset=["val/rougeL"])
    curve = curve[curve["step"] < train["steps"]]  # epochs (the last row re-validates the best checkpoint)
    print("| after epoch | step | val loss | val ROUGE-1 | val ROUGE-L |")
    print("|---:|---:|---:|---:|---:|")
    for _, row in curve.iterrows():
        print(f"| {int(row['epoch']) + 1} | {int(row['step']) + 1} | {row['val/loss']:.3f} | "
              f"{row['val/rouge1']:.4f} | {row['val/rougeL']:.4f} |")
    print()
    rows = [json.loads(line) for line in (run_dir / "samples" / "test.jsonl").read_text().splitlines()]
    print(f"{len({r['output'] for r in rows})} distinct outputs for {len(rows)} test articles; the first {n_samples}:")
    print()
    print("| reference headline | generated |")
    print("|---|---|")
    for row in rows[:n_samples]:
        print(f"| {row['reference']} | {row['output']} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], *(int(a) for a in sys.argv[3:4]))
