"""Training throughput: tunelab against a plain PyTorch loop on the same model and batches.

    python bench/throughput.py [--steps 40] [--experiment tweets-minilm] [--out results/benchmarks] [overrides ...]
    python bench/throughput.py --experiment "" --variants tunelab tunelab-packed --name packing \
        model=smollm2-135m task=chitchat tuning=lora

Each variant runs in its own process (so peak memory is its own) for the same number of
optimizer steps on the same batches (same length-grouped sampler, seed and collator):

- ``tunelab``: the LightningModule + datamodule + Trainer that ``train.py`` uses (validation,
  checkpointing and logging off, so the loop itself is measured).
- ``plain``: a hand-written loop: AdamW with the same parameter groups, linear schedule, clipping.
- ``plain-pad-max``: the same loop fed as the Hugging Face example scripts do by default: padded
  to max_length and shuffled at random, for scale.
- ``tunelab-packed``: ``tunelab`` with ``task.data.packing=true`` (decoder SFT: each batch's examples in one
  row, no padding). The ``plain`` variants are classification loops; for a decoder SFT experiment compare
  ``--variants tunelab tunelab-packed --name packing``.

The first ``--warmup`` steps are not timed. Prints a Markdown table and writes it (and JSON)
under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(experiment: str, steps: int, overrides: list[str]) -> tuple[Any, Any, Any]:
    import datasets
    import transformers
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from tunelab.config import CONFIG_DIR
    from tunelab.models import load_tokenizer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        chosen = [f"experiment={experiment}"] if experiment else []  # --experiment "": the overrides alone
        cfg = compose("train", overrides=[*chosen, f"trainer.max_steps={steps}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/tunelab-bench"
    tokenizer = load_tokenizer(cfg.model)
    dm = instantiate(cfg.task.data, tokenizer=tokenizer, seed=cfg.seed, _recursive_=False)
    dm.setup("fit")
    return cfg, tokenizer, dm


class _Meter:
    def __init__(self, warmup: int):
        self.warmup, self.step = warmup, 0
        self.samples = self.real = self.fed = 0
        self.seconds = 0.0
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, batch: Any) -> None:
        from tunelab.batch import token_counts

        elapsed = time.perf_counter() - self._t
        self.step += 1
        if self.step <= self.warmup:
            return
        self.seconds += elapsed
        samples, real, fed = token_counts(batch)
        self.samples += samples
        self.real += real
        self.fed += fed

    def result(self) -> dict[str, float]:
        return {
            "timed_steps": self.step - self.warmup,
            "samples_per_s": self.samples / self.seconds,
            "tokens_per_s": self.real / self.seconds,
            "padding_efficiency": self.real / self.fed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def run_tunelab(experiment: str, steps: int, warmup: int, overrides: list[str]) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate

    from tunelab.hardware import hardware_overrides

    cfg, _, dm = _setup(experiment, steps, overrides)
    L.seed_everything(cfg.seed)
    module = instantiate(cfg.task.module, **dm.module_kwargs(), model=cfg.model, optimizer=cfg.optimizer,
                         scheduler=cfg.scheduler, tuning=cfg.tuning, _recursive_=False, _convert_="all")
    meter = _Meter(warmup)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            meter.stop(batch)

    trainer = instantiate(cfg.trainer, **hardware_overrides(cfg.trainer), callbacks=[Timer()], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                          num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return meter.result()


def run_plain(experiment: str, steps: int, warmup: int, overrides: list[str], pad_to_max: bool = False) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, get_scheduler

    from tunelab.models import load_model
    from tunelab.tasks.base import no_decay_parameter_names

    cfg, tokenizer, dm = _setup(experiment, steps, overrides)
    torch.manual_seed(cfg.seed)
    model = load_model(AutoModelForSequenceClassification, cfg.model, num_labels=len(dm.labels))
    model.train()
    if pad_to_max:  # HF example scripts' default: pad_to_max_length, random shuffling
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=dm.max_length)
        loader = DataLoader(dm.features["train"], batch_size=dm.batch_size, shuffle=True, collate_fn=collate)
    else:
        loader = dm.train_dataloader()
    skip = no_decay_parameter_names(model)
    params = [(n, p) for n, p in model.named_parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if n not in skip], "weight_decay": cfg.optimizer.weight_decay},
         {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}],
        lr=cfg.optimizer.lr,
    )
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=int(0.1 * steps), num_training_steps=steps)
    meter = _Meter(warmup)
    step = 0
    while step < steps:
        for batch in loader:
            meter.start()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            meter.stop(batch)
            step += 1
            if step == steps:
                break
    return meter.result()


VARIANTS = {
    "plain": lambda a: run_plain(a.experiment, a.steps, a.warmup, a.overrides),
    "tunelab": lambda a: run_tunelab(a.experiment, a.steps, a.warmup, a.overrides),
    "plain-pad-max": lambda a: run_plain(a.experiment, a.steps, a.warmup, a.overrides, pad_to_max=True),
    "tunelab-packed": lambda a: run_tunelab(a.experiment, a.steps, a.warmup, [*a.overrides, "task.data.packing=true"]),
}


def _child(name: str, args: argparse.Namespace, queue: Any) -> None:
    queue.put(VARIANTS[name](args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tweets-minilm")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["plain", "tunelab", "plain-pad-max"], choices=list(VARIANTS))
    parser.add_argument("--name", default="throughput", help="the result files: <out>/<name>.md and .json")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. task.data.batch_size=16")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, float]] = {}
    for name in args.variants:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, args, queue))
        proc.start()
        while queue.empty() and proc.is_alive():  # a variant that crashes ends the benchmark instead of hanging it
            time.sleep(1)
        if queue.empty():
            raise SystemExit(f"variant {name} failed (exit code {proc.exitcode}); its traceback is above")
        results[name] = queue.get()
        proc.join()
        print(f"{name}: {results[name]['samples_per_s']:.1f} samples/s", flush=True)

    base_name = "plain" if "plain" in results else next(iter(results))
    base = results[base_name]["samples_per_s"]
    lines = [
        f"| variant | samples/s | real tokens/s | padding efficiency | peak RSS (MB) | vs {base_name} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ratio = f"{r['samples_per_s'] / base:.3f}x"
        lines.append(f"| {name} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['padding_efficiency']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {ratio} |")
    import torch

    command = "python bench/throughput.py " + shlex.join(sys.argv[1:])
    header = (f"Experiment `{args.experiment or 'none (the overrides alone)'}`, {args.steps} optimizer steps ({args.warmup} untimed warm-up), "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads.\n\nCommand: `{command.strip()}`\n")
    table = "\n".join(lines)
    print("\n" + header + "\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(f"# Training throughput\n\n{header}\n{table}\n")
    (out / f"{args.name}.json").write_text(json.dumps({"command": command, "args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
