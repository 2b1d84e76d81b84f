"""Multiple choice end to end: a tiny BERT learns the toy set; the export reloads in plain transformers and
through tunelab-predict; every tuning method trains (the PEFT head saved and restored) or is refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForMultipleChoice, AutoTokenizer

from tests.helpers import compose_train
from tests.mc_fixtures import NUM_CHOICES, as_swag, mc_overrides, toy_rows, write_jsonl
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.exported import load_run_model
from tunelab.predict import add_column_flags, predict
from tunelab.predict import main as predict_main
from tunelab.tasks.multiple_choice import MultipleChoiceModule
from tunelab.train import run

TUNINGS = sorted(p.stem for p in (CONFIG_DIR / "tuning").glob("*.yaml") if p.stem != "distill")
PROMPT_LEARNING = {"prompt": "PromptTuningConfig", "prefix": "PrefixTuningConfig", "ptuning": "PromptEncoderConfig"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mc_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """10 epochs of the tiny BERT on 500 toy rows (400 train / 50 val / 50 test)."""
    root = tmp_path_factory.mktemp("mc")
    data = write_jsonl(toy_rows(500, seed=0), root / "toy.jsonl")
    out = root / "run"
    return out, run(compose_train(out, *mc_overrides(tiny_bert, data, "optimizer.lr=5e-3", "trainer.max_epochs=10",
                                                     "task.module.num_samples=5")))


def batch_of(tokenizer, rows: list[dict]) -> dict[str, torch.Tensor]:
    pairs = tokenizer([r["context"] for r in rows for _ in r["choices"]], [c for r in rows for c in r["choices"]],
                      padding=True, return_tensors="pt")
    return {k: v.view(len(rows), len(rows[0]["choices"]), -1) for k, v in pairs.items()}


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_a_tiny_bert_learns_the_toy_set(mc_run: tuple[Path, dict]) -> None:
    out, metrics = mc_run
    log = pd.read_csv(out / "logs" / "metrics.csv")
    val = log["val/accuracy"].dropna().tolist()
    assert max(val) > val[0] + 0.3, val
    assert metrics["test"]["accuracy"] > 0.8, metrics["test"]  # chance: 1 / 4
    assert set(metrics["val"]) == set(metrics["test"]) == {"loss", "accuracy"}
    assert metrics["data"] == {"train": 400, "validation": 50, "test": 50}
    samples = [json.loads(line) for line in (out / "samples" / "test.jsonl").read_text().splitlines()]
    assert [s["row"] for s in samples] == list(range(5))
    assert set(samples[0]) == {"row", "context", "choices", "gold", "predicted", "confidence"}
    assert all(len(s["choices"]) == NUM_CHOICES and 1 / NUM_CHOICES <= s["confidence"] <= 1 for s in samples)


def test_export_reloads_in_transformers_and_predicts_the_same(mc_run: tuple[Path, dict]) -> None:
    out, metrics = mc_run
    module = MultipleChoiceModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    exported = AutoModelForMultipleChoice.from_pretrained(out / "model")
    rows = toy_rows(8, seed=7)
    batch = batch_of(AutoTokenizer.from_pretrained(out / "model"), rows)
    theirs = logits_of(exported, batch)
    torch.testing.assert_close(logits_of(module.model, batch), theirs)
    assert theirs.shape == (8, NUM_CHOICES)
    assert (theirs.argmax(-1) == torch.tensor([r["label"] for r in rows])).float().mean() > 0.7


def test_tunelab_predict_scores_a_file_with_and_without_labels(mc_run: tuple[Path, dict], tmp_path: Path,
                                                               capsys) -> None:
    out, _ = mc_run
    rows = toy_rows(40, seed=11)
    result = predict(out, write_jsonl(rows, tmp_path / "new.jsonl"), tmp_path / "pred.jsonl")
    written = pd.read_json(tmp_path / "pred.jsonl", lines=True)
    assert written["context"].tolist() == [r["context"] for r in rows]  # input order kept
    accuracy = (written["prediction"] == written["label"]).mean()
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy) and accuracy > 0.7  # the file's own score
    assert written["confidence"].between(1 / NUM_CHOICES, 1).all()
    unlabelled = write_jsonl([{k: r[k] for k in ("context", "choices")} for r in rows], tmp_path / "u.jsonl")
    result = predict(out, unlabelled)  # by default beside the file, as jsonl: the endings stay a list
    assert "metrics" not in result and result["predictions"] == str(tmp_path / "u.predictions.jsonl")
    alone = pd.read_json(tmp_path / "u.predictions.jsonl", lines=True)
    assert alone["choices"].tolist() == [r["choices"] for r in rows]
    assert alone["prediction"].tolist() == written["prediction"].tolist()
    renamed = write_jsonl([{"question": r["context"], "options": r["choices"], "answer": str(r["label"])} for r in rows],
                          tmp_path / "renamed.jsonl")
    assert predict_main([str(out), str(renamed), "-o", str(tmp_path / "r.jsonl"), "--context-column", "question",
                         "--choices-column", "options", "--label-column", "answer"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert pd.read_json(tmp_path / "r.jsonl", lines=True)["prediction"].tolist() == written["prediction"].tolist()
    swag = write_jsonl([as_swag(r) for r in rows], tmp_path / "swag.jsonl")  # the other layout: a column per ending
    assert predict_main([str(out), str(swag), "-o", str(tmp_path / "s.jsonl"), "--context-column", "sent1",
                         "--question-column", "sent2", "--ending-columns", "ending0,ending1,ending2,ending3"]) == 0
    scored = json.loads(capsys.readouterr().out)["metrics"]["accuracy"]
    predicted = pd.read_json(tmp_path / "s.jsonl", lines=True)["prediction"]
    assert scored == pytest.approx((predicted == pd.Series([r["label"] for r in rows])).mean()) and scored > 0.7


def test_predict_offers_the_multiple_choice_column_flags() -> None:
    parser = argparse.ArgumentParser()
    keys = add_column_flags(parser)
    assert {"choices_column", "ending_columns", "question_column", "context_column", "label_column"} <= set(keys)
    helps = {a.dest: a.help for a in parser._actions}
    assert "the candidate endings (a list)" in helps["choices_column"] and "MultipleChoice" in helps["choices_column"]
    assert "MultipleChoice" in helps["ending_columns"] and "MultipleChoice" in helps["label_column"]


@pytest.mark.parametrize("tuning", TUNINGS)
def test_every_tuning_method_trains_and_reloads_or_is_refused(tuning: str, tiny_bert: Path, tmp_path: Path) -> None:
    data = write_jsonl(toy_rows(48, seed=4), tmp_path / "toy.jsonl")  # 32 train rows: 2 steps of 16
    out = tmp_path / "run"
    extra = ["tuning.n_blocks=1"] if tuning == "freeze" else []
    cfg = compose_train(out, *mc_overrides(tiny_bert, data, f"tuning={tuning}", "trainer.max_epochs=1",
                                           "task.data.val_size=8", "task.data.test_size=8", *extra))
    if tuning in PROMPT_LEARNING:
        with pytest.raises(ConfigError, match=rf"tuning={tuning} \({PROMPT_LEARNING[tuning]}\) does not work with "
                                              r"multiple choice: .* use tuning=lora, ia3, adapter, bitfit, freeze, "
                                              r"head-only or full instead"):
            run(cfg)
        return
    if tuning == "qlora" and not torch.cuda.is_available():  # its CPU run: tests/tuning/test_qlora.py
        with pytest.raises(ConfigError, match="tuning=qlora needs a CUDA GPU"):
            run(cfg)
        return
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    assert (tuning == "full") == (metrics["params"]["trainable_pct"] == 100)
    module = MultipleChoiceModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
    assert any(p.requires_grad for n, p in module.model.named_parameters() if "classifier" in n)  # the head trains
    batch = batch_of(AutoTokenizer.from_pretrained(out / "model"), toy_rows(6, seed=8))
    trained = logits_of(module.model, batch)
    torch.testing.assert_close(logits_of(load_run_model(out), batch), trained)
    if cfg.tuning._target_.endswith("Peft"):  # plain peft: the trained head comes back, not a new random one
        assert json.loads((out / "model" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
        base = AutoModelForMultipleChoice.from_pretrained(tiny_bert, ignore_mismatched_sizes=True)
        torch.testing.assert_close(logits_of(PeftModel.from_pretrained(base, out / "model"), batch), trained)
