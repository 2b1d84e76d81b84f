"""Memory per rank: one process, DDP on 2 ranks and FSDP2 on 2 ranks, on the same run (CPU processes).

    python bench/fsdp_memory.py [--steps 6] [--name fsdp-memory] [overrides ...]
    python bench/fsdp_memory.py --name fsdp-memory-smollm2 model=smollm2-135m task=chitchat

Each layout is a real ``train.py`` run (validation, test and export off the clock: ``--steps`` optimizer
steps, then the run ends) with a probe callback that, at every ``on_before_optimizer_step`` from the second
step on (gradients there, optimizer states made by the first step), adds up the bytes of the tensors this
rank holds: its parameters, their gradients and the optimizer states (for FSDP2: the local shards of each
``DTensor``). Beside it: the expected share, (parameters + gradients + optimizer states) of the whole model
divided by the ranks that shard them (1 for DDP, which replicates), and the process's resident memory (RSS)
at that point and at its peak (which includes loading the full model before it is sharded). glibc's
malloc keeps freed memory that its adaptive threshold moved onto the heap, so a process that freed the full
model after sharding it would not look smaller: every layout runs with ``MALLOC_MMAP_THRESHOLD_=131072``
(large tensors in their own mappings, returned when freed). Prints a Markdown table and writes it (and
JSON) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"one process": ("default", 1), "DDP, 2 ranks": ("ddp", 2), "FSDP2, 2 ranks": ("fsdp", 2)}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _bytes(tensors: Any) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors if isinstance(t, torch.Tensor))


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemoryProbe(L.Callback):
    """Writes ``<out>.rank<r>.json``: the largest per-rank tensor bytes and RSS seen before an optimizer step."""

    def __init__(self, out: str):
        self.out = out
        self.seen: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step < 1:
            return  # the optimizer's states appear at its first step
        params = [p for p in pl_module.parameters()]
        states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
        now = {"params_mb": _bytes(params) / 2**20, "grads_mb": _bytes(p.grad for p in params) / 2**20,
               "optimizer_mb": _bytes(states) / 2**20, "rss_mb": _rss_mb()}
        self.seen = {k: max(v, self.seen.get(k, 0.0)) for k, v in now.items()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = sum(_local(p).numel() for p in pl_module.parameters())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(f"{self.out}.rank{trainer.global_rank}.json").write_text(json.dumps(
            {**self.seen, "peak_rss_mb": peak, "local_params": total, "world_size": trainer.world_size}))


def run_layout(name: str, steps: int, overrides: list[str], work: Path, port: int) -> list[dict[str, Any]]:
    trainer, devices = LAYOUTS[name]
    probe = work / trainer
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // devices)), PYTHONPATH=str(ROOT),
               MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"trainer={trainer}", f"trainer.devices={devices}",
           "trainer.num_nodes=1", "trainer.accelerator=cpu", f"trainer.max_steps={steps}", "trainer.limit_val_batches=0",
           "trainer.limit_test_batches=1", "logger=none", "progress=none", "callbacks.lr_monitor=null",
           "+callbacks.memory._target_=bench.fsdp_memory.MemoryProbe", f"+callbacks.memory.out={probe}",
           f"hydra.run.dir={work / ('run-' + trainer)}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return [json.loads(Path(f"{probe}.rank{r}.json").read_text()) for r in range(devices)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--name", default="fsdp-memory", help="the result files: <out>/<name>.md and .json")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("--work", default="/tmp/tunelab-bench-memory")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=smollm2-135m task=chitchat")
    args = parser.parse_args()
    work = Path(args.work)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    results = {name: run_layout(name, args.steps, args.overrides, work, 29850 + i) for i, name in enumerate(LAYOUTS)}

    one = results["one process"][0]
    whole = one["params_mb"] + one["grads_mb"] + one["optimizer_mb"]
    rows = []
    for name, ranks in results.items():
        shards = 2 if name.startswith("FSDP2") else 1
        for rank, r in enumerate(ranks):
            held = r["params_mb"] + r["grads_mb"] + r["optimizer_mb"]
            rows.append({"layout": name, "rank": rank, **{k: round(v, 1) for k, v in r.items() if k.endswith("_mb")},
                         "held_mb": round(held, 1), "expected_mb": round(whole / shards, 1), "local_params": r["local_params"]})
    command = "python bench/fsdp_memory.py " + shlex.join([f"--steps={args.steps}", f"--name={args.name}", *args.overrides])
    lines = [
        "# Memory per rank: one process, DDP and FSDP2 on 2 CPU ranks", "",
        f"{args.steps} optimizer steps, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        "tensor sizes read at `on_before_optimizer_step` (largest over the steps after the first).", "",
        f"Command: `{command}`", "",
        "held = parameters + gradients + optimizer states this rank holds (local shards under FSDP2); expected = "
        "the whole model's (from the one-process run) / the ranks that shard them (DDP replicates: / 1). "
        "RSS adds activations, the libraries and (peak) the full model loaded before sharding; "
        "`MALLOC_MMAP_THRESHOLD_=131072` in every layout, so that freed tensors leave RSS.", "",
        "| layout | rank | parameters (MB) | gradients (MB) | optimizer states (MB) | held (MB) | expected (MB) "
        "| RSS at step (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['layout']} | {r['rank']} | {r['params_mb']} | {r['grads_mb']} | {r['optimizer_mb']} | {r['held_mb']} "
          f"| {r['expected_mb']} | {r['rss_mb']} | {r['peak_rss_mb']} |" for r in rows],
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
