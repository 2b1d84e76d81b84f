"""One optimizer step over a model's parameters with each of torch's implementations: the Python loop over the
parameters (``foreach=False``, torch's default on a CPU), ``foreach=True`` and ``fused=True``.

    python bench/optimizer_step.py [--model minilm] [--steps 20] [--out results/benchmarks]

The parameters are those of ``model/<name>.yaml`` (their shapes and count; random gradients), in tunelab's two
weight-decay groups. Prints a Markdown table of milliseconds per step (median of ``--repeats``) and saves it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPTIMIZERS = {
    "AdamW": ("torch.optim.AdamW", {"lr": 1e-4, "weight_decay": 0.01}),
    "Adam": ("torch.optim.Adam", {"lr": 1e-4}),
    "SGD (momentum 0.9)": ("torch.optim.SGD", {"lr": 1e-2, "momentum": 0.9}),
    "RMSprop": ("torch.optim.RMSprop", {"lr": 1e-4}),
}
KERNELS = {"loop (foreach=False)": {"foreach": False}, "foreach=True": {"foreach": True}, "fused=True": {"fused": True}}


def main() -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class
    from transformers import AutoModelForSequenceClassification

    from tunelab.config import CONFIG_DIR
    from tunelab.models import load_model
    from tunelab.optim import weight_decay_groups

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    model = load_model(AutoModelForSequenceClassification, cfg.model, num_labels=3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    count = sum(p.numel() for p in model.parameters())
    rows = {}
    for label, (target, kwargs) in OPTIMIZERS.items():
        rows[label] = {}
        for kernel, choice in KERNELS.items():
            cls = get_class(target)
            try:
                optimizer = cls(weight_decay_groups(model, kwargs.get("weight_decay", 0.0)), **kwargs, **choice)
            except (TypeError, RuntimeError):  # no such kernel
                rows[label][kernel] = None
                continue
            optimizer.step()  # states allocated
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for _ in range(args.steps):
                    optimizer.step()
                times.append((time.perf_counter() - started) / args.steps * 1000)
            rows[label][kernel] = statistics.median(times)
            del optimizer

    command = "python bench/optimizer_step.py " + " ".join(sys.argv[1:])
    header = (f"`{cfg.model.name_or_path}`: {count / 1e6:.1f}M parameters in {len(list(model.parameters()))} tensors; "
              f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"milliseconds per step, median of {args.repeats} x {args.steps} steps.\n\nCommand: `{command.strip()}`\n")
    lines = ["| optimizer | " + " | ".join(KERNELS) + " |", "|---|" + "---:|" * len(KERNELS)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join("no kernel" if v is None else f"{v:.1f}" for v in cells.values()) + " |")
    table = "\n".join(lines)
    print(header + "\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizer-step.md").write_text(f"# Optimizer step\n\n{header}\n{table}\n")
    (out / "optimizer-step.json").write_text(json.dumps({"command": command, "ms_per_step": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
