"""End to end: a tiny BERT learns a learnable task and leaves a complete run folder."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tunelab.tasks import SequenceClassificationModule
from tunelab.train import run


def test_training_lowers_loss_and_beats_chance(finished_run: tuple[Path, dict]) -> None:
    out, metrics = finished_run
    log = pd.read_csv(out / "logs" / "metrics.csv")
    epoch_loss = log["train/loss_epoch"].dropna().tolist()
    assert len(epoch_loss) == 6
    assert epoch_loss[-1] < 0.5 * epoch_loss[0]
    assert metrics["test"]["accuracy"] > 0.8  # chance is 1/3
    assert metrics["val"]["macro_f1"] > 0.8


def test_run_folder_is_complete(finished_run: tuple[Path, dict]) -> None:
    out, metrics = finished_run
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"] == pytest.approx(metrics["test"])
    assert set(saved["test"]) >= {"accuracy", "macro_f1", "precision", "recall", "loss",
                                   "f1_per_class/alpha", "f1_per_class/beta", "f1_per_class/gamma"}
    assert saved["params"]["trainable"] == saved["params"]["total"] > 0
    assert saved["train"]["samples_per_s"] > 0 and saved["train"]["train_samples"] == 6 * saved["data"]["train"]
    assert 0 < saved["train"]["padding_efficiency"] <= 1
    assert saved["data"] == {"train": 480, "validation": 60, "test": 60}
    # evaluation speed: validation after each of the 6 epochs, and once more on the best checkpoint unless it holds
    # the final weights (which the last one scored); the test set once
    best_step = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True, mmap=True)["global_step"]
    validations = 6 + (best_step != saved["train"]["steps"])
    assert saved["eval"]["val_samples"] == validations * 60 and saved["eval"]["test_samples"] == 60
    assert saved["eval"]["test_samples_per_s"] > 0 and saved["eval"]["val_samples_per_s"] > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["task"]["name"] == "csv" and config["seed"] == 42  # resolved, plain yaml
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] == torch.__version__
    assert {"commit", "dirty"} <= set(env["git"]) and env["hardware"]["cpu_count"] > 0
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    exported = json.loads((out / "model" / "config.json").read_text())
    assert exported["id2label"] == {"0": "alpha", "1": "beta", "2": "gamma"}
    assert not list(out.rglob("*.tmp"))


def test_checkpoint_and_exported_model_predict_the_same(finished_run: tuple[Path, dict]) -> None:
    out, _ = finished_run
    texts = make_rows(24, seed=99)["text"].tolist()
    module = SequenceClassificationModule.load_from_checkpoint(out / "checkpoints" / "best.ckpt").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    with torch.no_grad():
        probs = module.model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    classify = pipeline("text-classification", model=str(out / "model"), device="cpu")
    results = classify(texts)
    assert [r["label"] for r in results] == [module.labels[i] for i in probs.argmax(-1).tolist()]
    assert [r["score"] for r in results] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)
    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    for name, tensor in module.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)


def test_same_seed_gives_identical_metrics(finished_run: tuple[Path, dict], tiny_bert: Path, learnable_csv: Path,
                                           tmp_path: Path) -> None:
    _, first = finished_run
    again = run(compose_train(tmp_path / "again", *tiny_overrides(tiny_bert, learnable_csv)))
    assert again["test"] == first["test"] and again["val"] == first["val"]


class NaNFillOn(L.Callback):
    """Puts back torch's NaN fill of uninitialized memory, which tunelab turns off, for the run's fit."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.utils.deterministic.fill_uninitialized_memory = True


def test_deterministic_runs_train_the_same_without_the_nan_fill(tiny_bert: Path, learnable_csv: Path,
                                                                tmp_path: Path) -> None:
    """``trainer.deterministic`` keeps deterministic kernels but not torch's NaN fill of new tensors (a guard
    that costs ~2% of a CPU step): a run with the fill back on has the same loss at every step, bit for bit."""
    losses = {}
    for name, extra in (("fill", ["+callbacks.nan_fill._target_=tests.test_train.NaNFillOn"]), ("no-fill", [])):
        out = tmp_path / name
        run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_steps=8", *extra)))
        rows = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["train/loss_step"])
        losses[name] = rows["train/loss_step"].tolist()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is (name == "fill")
    assert len(losses["fill"]) == 8 and losses["fill"] == losses["no-fill"]


def test_logger_none_trains_and_writes_metrics(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """``logger=none`` (README): LearningRateMonitor needs a logger, so it is left out instead of crashing."""
    out = tmp_path / "run"
    metrics = run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=2", "logger=none")))
    assert metrics["test"]["accuracy"] > 0 and not (out / "logs").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_validation_off_trains_tests_and_exports_the_final_weights(tiny_bert: Path, learnable_csv: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "trainer.limit_val_batches=0")))
    assert metrics["val"] == {} and metrics["best_checkpoint"] is None
    assert metrics["test"]["accuracy"] > 0.8 and metrics["train"]["steps"] == 6 * 30
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "checkpoints" / "best.ckpt").exists()
    # the export holds the final weights: the same test accuracy from plain transformers
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    rows = pd.read_csv(learnable_csv)
    with torch.no_grad():
        logits = model(**tokenizer(rows["text"].tolist()[:50], padding=True, return_tensors="pt")).logits
    assert (logits.argmax(-1).numpy() == rows["label"].map({"alpha": 0, "beta": 1, "gamma": 2}).to_numpy()[:50]).mean() > 0.8


@pytest.mark.parametrize("key", ["max_epochs", "max_steps", "limit_train_batches"])
def test_zero_epochs_or_steps_is_refused_not_exported(key: str, tiny_bert: Path, learnable_csv: Path,
                                                      tmp_path: Path) -> None:
    from tunelab.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"trainer.{key}=0 trains nothing.*train=false"):
        run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, f"trainer.{key}=0")))
    assert not out.exists()


def test_train_false_evaluates_the_model_or_a_checkpoint_without_training(
        finished_run: tuple[Path, dict], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    trained_dir, trained = finished_run
    zero_shot = run(compose_train(tmp_path / "zero", *tiny_overrides(tiny_bert, learnable_csv, "train=false")))
    assert zero_shot["train"]["trained"] is False and zero_shot["train"]["steps"] == 0
    assert zero_shot["test"]["accuracy"] < 0.6  # an untrained head: about chance (1/3)
    assert not (tmp_path / "zero" / "model").exists() and not (tmp_path / "zero" / "checkpoints").exists()
    assert json.loads((tmp_path / "zero" / "status.json").read_text())["status"] == "completed"
    best = trained_dir / "checkpoints" / "best.ckpt"
    evaluate = tiny_overrides(tiny_bert, learnable_csv, "train=false")
    # each evaluated checkpoint is a run of its own: never another checkpoint's metrics as "already completed"
    assert compose_train(tmp_path, *evaluate).run_id != compose_train(tmp_path, *evaluate, f"ckpt_path={best}").run_id
    again = run(compose_train(tmp_path / "ckpt", *tiny_overrides(tiny_bert, learnable_csv, "train=false",
                                                                  f"ckpt_path={best}")))
    assert again["test"] == pytest.approx(trained["test"]) and again["val"] == pytest.approx(trained["val"])


def test_the_last_validation_of_the_best_weights_is_not_repeated(tiny_bert: Path, learnable_csv: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch: the best checkpoint holds the final weights, which fit's last validation scored; the run reports
    that validation instead of repeating it and tests the weights in memory without reading the checkpoint back,
    with the metrics a fresh validation and test of the checkpoint give."""
    from tunelab.callbacks import AtomicCheckpointIO

    loaded = []
    reader = AtomicCheckpointIO.load_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint", lambda self, path, *a, **k: loaded.append(path)
                        or reader(self, path, *a, **k))
    one_epoch = run(compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1")))
    assert loaded == []
    assert one_epoch["eval"]["val_samples"] == one_epoch["data"]["validation"]  # one validation, in fit
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    fresh = run(compose_train(tmp_path / "ckpt", *tiny_overrides(tiny_bert, learnable_csv, "train=false",
                                                                  f"ckpt_path={best}")))
    assert fresh["eval"]["val_samples"] == fresh["data"]["validation"]
    assert one_epoch["val"] == pytest.approx(fresh["val"], abs=1e-6) and set(one_epoch["val"]) == set(fresh["val"])
    assert one_epoch["test"] == pytest.approx(fresh["test"], abs=1e-6)
    assert loaded and {str(path) for path in loaded} == {str(best)}  # the evaluation-only run reads it


def test_a_further_test_set_beside_a_carved_test_split(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """``task.data.splits`` naming only train and a ``test_<name>`` set: ``test`` is carved from train and
    both are tested (``test`` first, as the module's metrics expect)."""
    shifted = tmp_path / "shifted.csv"
    make_rows(45, seed=7).to_csv(shifted, index=False)
    metrics = run(compose_train(tmp_path / "run", *tiny_overrides(
        tiny_bert, learnable_csv, "trainer.max_epochs=1", "logger=none", f"+task.data.source.data_files.shifted={shifted}",
        "task.data.splits={train: train, test_shifted: shifted}")))
    assert metrics["data"]["test"] == 60 and metrics["data"]["test_shifted"] == 45
    assert set(metrics["test"]) == set(metrics["test_shifted"]) and "accuracy" in metrics["test_shifted"]
