"""Training throughput: tunelab against the Hugging Face Trainer and a plain PyTorch loop, one invocation.

    python bench/throughput.py [--epochs 1 | --steps 80] [--experiment tweets-minilm] [--out results/benchmarks] [overrides ...]
    python bench/throughput.py --experiment "" --variants tunelab tunelab-packed --name packing \
        model=smollm2-135m task=chitchat tuning=lora

Each runner trains in its own process (so peak memory and start-up are its own) on the same data, batch size,
length grouping (transformers' ``LengthGroupedSampler`` in all of them), rate, schedule, clipping and seed,
then evaluates the test split:

- ``tunelab``: ``tunelab.train.run``, what ``python train.py`` does (validation, checkpoints, the CSV log,
  the export), with the experiment's config.
- ``hf-trainer``: ``transformers.Trainer`` with its defaults (``optim=adamw_torch_fused``,
  ``train_sampling_strategy=group_by_length``), evaluating validation, predicting test and saving the model,
  as the example scripts do.
- ``hf-trainer-same-batches``: ``hf-trainer`` fed the other runners' batches in their order (their sampler, the
  same class as the Trainer's, seeded per epoch; the Trainer's own draws another order from the global RNG) and
  the head initialised as theirs: the same work, so only the loop differs.
- ``plain`` / ``plain-fused``: a hand-written loop with ``torch.optim.AdamW()`` as most code calls it (torch's
  default: a Python loop over the parameters on a CPU) / with ``fused=True``.
- ``plain-pad-max``: the plain loop fed as the Hugging Face example scripts do by default (padded to
  max_length, shuffled at random), for scale.
- ``tunelab-packed``: ``tunelab`` with ``task.data.packing=true`` (decoder SFT: each batch's examples in one
  row, no padding); compare ``--variants tunelab tunelab-packed`` on a decoder SFT experiment.
- ``tunelab-max-tokens``: ``tunelab`` with ``task.data.max_tokens=<--max-tokens>`` (token-budget batches: as
  many examples as fit the budget of fed tokens, instead of ``batch_size``).

Every runner is timed by the same code (``step_meter.py``): from the end of the last ``--warmup`` step to the
end of the last step, with everything between steps (data loading, logging) counted; useful FLOP/s count the
real tokens only, as a fraction of this machine's fp32 GEMM peak measured first. Prints a Markdown table and
writes it (and JSON) under ``--out``.
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
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def _compose(args: argparse.Namespace, extra: list[str] = ()) -> Any:
    """The run's config: the experiment, the length of training (``--epochs`` or ``--steps``), the overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from tunelab.config import CONFIG_DIR

    length = [f"trainer.max_steps={args.steps}"] if args.steps else [f"trainer.max_epochs={args.epochs}", "trainer.max_steps=-1"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        chosen = [f"experiment={args.experiment}"] if args.experiment else []  # --experiment "": the overrides alone
        cfg = compose("train", overrides=[*chosen, *length, *args.overrides, *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="tunelab-bench-")
    return cfg


def _data(cfg: Any) -> tuple[Any, Any]:
    import datasets
    import transformers

    from tunelab.models import load_tokenizer
    from tunelab.train import build_datamodule

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("fit")
    return tokenizer, dm


def _scores(predictions: Any, labels: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"test_accuracy": float(accuracy_score(labels, predictions)),
            "test_macro_f1": float(f1_score(labels, predictions, average="macro"))}


def run_tunelab(args: argparse.Namespace, extra: list[str] = ()) -> dict[str, float]:
    from step_meter import LightningMeter, StepMeter

    from tunelab.train import run

    meter = LightningMeter.current = StepMeter(args.warmup)
    cfg = _compose(args, [*extra, "+callbacks.bench_meter._target_=step_meter.LightningMeter"])
    metrics = run(cfg)
    meter.timed_eval(metrics["eval"]["test_samples"], metrics["eval"]["test_time_s"])  # run's own test-loop clock
    return {**meter.result(), **{f"test_{k}": v for k, v in metrics["test"].items() if "/" not in k},
            "reported_samples_per_s": metrics["train"]["samples_per_s"]}


def _train_steps(cfg: Any, dm: Any) -> int:
    per_epoch = len(dm.train_dataloader())
    return cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else per_epoch * cfg.trainer.max_epochs


def run_hf_trainer(args: argparse.Namespace, same_batches: bool = False) -> dict[str, float]:
    import numpy as np
    import torch
    from step_meter import HFMeter, StepMeter
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tunelab.models import load_model

    cfg = _compose(args)
    tokenizer, dm = _data(cfg)
    if same_batches:
        torch.manual_seed(cfg.seed)  # the head's initial weights of the other runners
    model = load_model(AutoModelForSequenceClassification, cfg.model, num_labels=len(dm.labels))
    meter = StepMeter(args.warmup)
    length = {"max_steps": cfg.trainer.max_steps} if cfg.trainer.max_steps > 0 else {"num_train_epochs": cfg.trainer.max_epochs}
    training_args = TrainingArguments(
        output_dir=cfg.paths.output_dir, per_device_train_batch_size=dm.batch_size, per_device_eval_batch_size=dm.eval_batch_size,
        learning_rate=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay, adam_beta1=cfg.optimizer.betas[0],
        adam_beta2=cfg.optimizer.betas[1], adam_epsilon=cfg.optimizer.eps, max_grad_norm=cfg.trainer.gradient_clip_val,
        lr_scheduler_type=cfg.scheduler.name, warmup_steps=cfg.scheduler.warmup_steps or cfg.scheduler.warmup_ratio,
        train_sampling_strategy="group_by_length" if dm.group_by_length else "random",
        seed=cfg.seed, report_to="none", save_strategy="no", disable_tqdm=True, **length,
    )
    trainer_class = Trainer
    if same_batches:  # the other runners' sampler (tunelab's transformers LengthGroupedSampler, seeded per epoch)
        class SameBatchesTrainer(Trainer):
            def _get_train_sampler(self, train_dataset: Any = None) -> Any:
                return dm.train_dataloader().sampler

        trainer_class = SameBatchesTrainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=dm.features["train"],
                      eval_dataset=dm.features["validation"], processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[HFMeter(meter)])
    trainer.train()
    trainer.evaluate()
    started = time.perf_counter()
    predicted = trainer.predict(dm.features["test"])
    meter.timed_eval(len(dm.features["test"]), time.perf_counter() - started)
    trainer.save_model(Path(cfg.paths.output_dir) / "model")
    return {**meter.result(), **_scores(np.argmax(predicted.predictions, -1), predicted.label_ids)}


def run_plain(args: argparse.Namespace, fused: bool = False, pad_to_max: bool = False) -> dict[str, float]:
    import torch
    from step_meter import StepMeter
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, get_scheduler

    from tunelab.models import load_model
    from tunelab.optim import no_decay_parameter_names

    cfg = _compose(args)
    tokenizer, dm = _data(cfg)
    torch.manual_seed(cfg.seed)
    model = load_model(AutoModelForSequenceClassification, cfg.model, num_labels=len(dm.labels))
    model.train()
    if pad_to_max:  # HF example scripts' default: pad_to_max_length, random shuffling
        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=dm.max_length)
        loader = DataLoader(dm.features["train"], batch_size=dm.batch_size, shuffle=True, collate_fn=collate)
    else:
        loader = dm.train_dataloader()
    skip = no_decay_parameter_names(model)
    params = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in params if n not in skip], "weight_decay": cfg.optimizer.weight_decay},
         {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}],
        lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), eps=cfg.optimizer.eps, **({"fused": True} if fused else {}),
    )
    steps = _train_steps(cfg, dm)
    warmup = cfg.scheduler.warmup_steps or round(cfg.scheduler.warmup_ratio * steps)
    schedule = get_scheduler(cfg.scheduler.name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    meter = StepMeter(args.warmup)
    meter.attach(model)
    step = 0
    while step < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            meter.step_end()
            step += 1
            if step == steps:
                break
    model.eval()
    predictions, labels = [], []
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            predictions.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1))
            labels.append(batch["labels"])
    meter.timed_eval(len(dm.features["test"]), time.perf_counter() - started)
    return {**meter.result(), **_scores(torch.cat(predictions).numpy(), torch.cat(labels).numpy())}


VARIANTS = {
    "tunelab": run_tunelab,
    "hf-trainer": run_hf_trainer,
    "hf-trainer-same-batches": lambda a: run_hf_trainer(a, same_batches=True),
    "plain": run_plain,
    "plain-fused": lambda a: run_plain(a, fused=True),
    "plain-pad-max": lambda a: run_plain(a, pad_to_max=True),
    "tunelab-packed": lambda a: run_tunelab(a, ["task.data.packing=true"]),
    "tunelab-max-tokens": lambda a: run_tunelab(a, [f"task.data.max_tokens={a.max_tokens}"]),
}


def gemm_peak_flop_per_s(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate (best of ``repeats``), with torch's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def _child(name: str, args: argparse.Namespace, queue: Any) -> None:
    result = VARIANTS[name](args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or value != value else format(value, fmt)


def table(results: dict[str, dict[str, float]], peak: float) -> str:
    """The Markdown table: every runner beside the Hugging Face Trainer (or the first runner)."""
    base_name = "hf-trainer" if "hf-trainer" in results else next(iter(results))
    base = results[base_name]["samples_per_s"]
    lines = [
        "| runner | train samples/s (lowest to highest) | vs " + base_name + " | real tokens/s | padding efficiency | useful GFLOP/s "
        "(% of GEMM peak) | eval samples/s | test accuracy | test macro-F1 | wall time (s) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        flops = r["train_flop_per_s"]
        lines.append(
            f"| {name} | {r['samples_per_s']:.1f} ({r['samples_per_s_min']:.1f} to {r['samples_per_s_max']:.1f}) | "
            f"{r['samples_per_s'] / base:.3f}x | {r['tokens_per_s']:.0f} | "
            f"{r['padding_efficiency']:.3f} | {flops / 1e9:.1f} ({100 * flops / peak:.0f}%) | {_cell(r['eval_samples_per_s'], '.1f')} | "
            f"{_cell(r.get('test_accuracy'), '.4f')} | {_cell(r.get('test_macro_f1'), '.4f')} | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def summarize(repeats: list[dict[str, float]]) -> dict[str, Any]:
    """The median of each figure over the repeats, the lowest and highest train samples/s, and every repeat."""
    import statistics

    numbers = [k for k, v in repeats[0].items() if isinstance(v, (int, float))]
    median = {k: statistics.median(r[k] for r in repeats) for k in numbers}
    speeds = [r["samples_per_s"] for r in repeats]
    return {**median, "samples_per_s_min": min(speeds), "samples_per_s_max": max(speeds), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="tweets-minilm")
    parser.add_argument("--epochs", type=int, default=1, help="training length in epochs (the default)")
    parser.add_argument("--steps", type=int, default=0, help="> 0: this many optimizer steps instead of --epochs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--variants", nargs="+", default=["tunelab", "hf-trainer", "plain", "plain-fused"], choices=list(VARIANTS))
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="the budget of tunelab-max-tokens (fed tokens per batch; batch 32 of tweets feeds ~1060)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each runner (round-robin); the table shows medians")
    parser.add_argument("--name", default="throughput", help="the result files: <out>/<name>.md and .json")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. task.data.batch_size=16")
    args = parser.parse_args()

    import torch

    peak = gemm_peak_flop_per_s()
    print(f"fp32 GEMM peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.variants}
    for repeat in range(args.repeats):  # round-robin, so a slow spell of a shared machine hits every runner alike
        for name in args.variants:
            queue = ctx.Queue()
            started = time.perf_counter()
            proc = ctx.Process(target=_child, args=(name, args, queue))
            proc.start()
            while queue.empty() and proc.is_alive():  # a variant that crashes ends the benchmark instead of hanging it
                time.sleep(0.2)
            if queue.empty():
                raise SystemExit(f"variant {name} failed (exit code {proc.exitcode}); its traceback is above")
            runs[name].append({**queue.get(), "wall_s": time.perf_counter() - started})
            proc.join()
            print(f"{name} (repeat {repeat + 1}): {runs[name][-1]['samples_per_s']:.1f} samples/s", flush=True)
    results = {name: summarize(r) for name, r in runs.items()}

    command = "python bench/throughput.py " + shlex.join(sys.argv[1:])
    length = f"{args.steps} optimizer steps" if args.steps else f"{args.epochs} epoch(s)"
    header = (f"Experiment `{args.experiment or 'none (the overrides alone)'}`, {length} ({args.warmup} untimed warm-up steps), "
              f"each runner in its own process, {args.repeats} time(s) round-robin, medians shown; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s (2048x2048 matmul).\n\nCommand: `{command.strip()}`\n")
    text = table(results, peak)
    print("\n" + header + "\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(f"# Training throughput\n\n{header}\n{text}\n")
    record = {"command": command, "args": vars(args), "gemm_peak_flop_per_s": peak, "results": results}
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
