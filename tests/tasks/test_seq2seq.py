"""Seq2seq task module: tiny T5 and tiny BERT2BERT learn a toy summary (loss falls, ROUGE/BLEU
rise), the export reloads and generates the same, test samples and predictions are written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from tests.helpers import compose_train
from tests.seq2seq_fixtures import (  # noqa: F401
    bert2bert_overrides,
    make_pairs,
    pairs_csv,
    t5_overrides,
    tiny_bert_encoder,
    tiny_t5,
)
from tunelab.exported import load_run_model
from tunelab.predict import predict
from tunelab.train import run


def epoch_curves(run_dir: Path) -> pd.DataFrame:
    """Per-epoch validation metrics and training loss from the csv logger."""
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    val = frame.dropna(subset=["val/rougeL"]).groupby("epoch").last()
    train = frame.dropna(subset=["train/loss_epoch"]).groupby("epoch")["train/loss_epoch"].last()
    return val.join(train.rename("train_loss"), how="inner")  # epochs that trained (not the final validate)


@pytest.fixture(scope="module")
def t5_run(tiny_t5: Path, pairs_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("t5-run") / "run"
    return out, run(compose_train(out, *t5_overrides(tiny_t5, pairs_csv, "trainer.max_epochs=6")))


def test_tiny_t5_learns_the_summary(t5_run: tuple[Path, dict]) -> None:
    run_dir, metrics = t5_run
    curves = epoch_curves(run_dir)
    first, last = curves.iloc[0], curves.iloc[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["val/loss"] < 0.5 * first["val/loss"]
    assert last["val/rougeL"] > first["val/rougeL"] + 0.15 and last["val/sacrebleu"] > first["val/sacrebleu"] + 0.15
    assert last["val/chrf"] > first["val/chrf"]
    assert metrics["test"]["rouge1"] > 0.8 and metrics["test"]["sacrebleu"] > 0.5 and metrics["test"]["chrf"] > 0.7
    assert metrics["val"]["rougeL"] == pytest.approx(curves["val/rougeL"].max())  # the best checkpoint is evaluated


def test_test_samples_hold_source_reference_output(t5_run: tuple[Path, dict]) -> None:
    run_dir, metrics = t5_run
    rows = [json.loads(line) for line in (run_dir / "samples" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["data"]["test"] == 40
    assert set(rows[0]) == {"source", "reference", "output"}
    assert sum(r["output"] == r["reference"] for r in rows) > len(rows) // 2


def test_export_reloads_and_generates_the_same(t5_run: tuple[Path, dict]) -> None:
    run_dir, _ = t5_run
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    plain = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "model").eval()
    reloaded = load_run_model(run_dir).eval()
    inputs = tokenizer(make_pairs(8, seed=5)["source"].tolist(), return_tensors="pt", padding=True)
    with torch.no_grad():
        a = plain.generate(**inputs, max_new_tokens=8)
        b = reloaded.generate(**inputs, max_new_tokens=8)
    assert torch.equal(a, b)


def test_predict_writes_generated_text_and_scores_labelled_files(t5_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = t5_run
    data = tmp_path / "new.csv"
    rows = make_pairs(20, seed=9)
    rows.to_csv(data, index=False)
    result = predict(run_dir, data, tmp_path / "out.jsonl")
    out = pd.read_json(result["predictions"], lines=True)
    assert out["source"].tolist() == rows["source"].tolist()  # input order kept
    assert (out["prediction"] == out["target"]).mean() > 0.5
    assert result["metrics"]["rouge1"] > 0.8

    rows[["source"]].to_csv(data, index=False)  # unlabelled: generation only
    result = predict(run_dir, data, tmp_path / "out2.csv")
    assert "metrics" not in result and pd.read_csv(result["predictions"])["prediction"].notna().all()


def test_tiny_bert2bert_learns_and_reloads_as_seq2seq_lm(tiny_bert_encoder: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    metrics = run(compose_train(out, *bert2bert_overrides(tiny_bert_encoder, pairs_csv, "trainer.max_epochs=6")))
    curves = epoch_curves(out)
    assert curves["train_loss"].iloc[-1] < 0.5 * curves["train_loss"].iloc[0]
    assert curves["val/rougeL"].iloc[-1] > curves["val/rougeL"].iloc[0] + 0.15
    assert metrics["test"]["rouge1"] > 0.7
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model")
    assert type(model).__name__ == "EncoderDecoderModel" and model.config.decoder.add_cross_attention
    assert model.generation_config.decoder_start_token_id == AutoTokenizer.from_pretrained(out / "model").cls_token_id


@pytest.mark.parametrize("tuning", ["lora", "freeze"])
def test_tuning_strategies_apply_to_seq2seq_models(tuning: str, tiny_t5: Path, tiny_bert_encoder: Path, pairs_csv: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    for name, overrides in (("t5", t5_overrides(tiny_t5, pairs_csv)), ("b2b", bert2bert_overrides(tiny_bert_encoder, pairs_csv))):
        out = tmp_path / name
        metrics = run(compose_train(out, *overrides, f"tuning={tuning}", "trainer.max_steps=2",
                                    "task.data.max_samples={train: 32, validation: 16, test: 16}"))
        assert metrics["params"]["trainable_pct"] < 100
        reloaded = load_run_model(out)
        assert hasattr(reloaded, "generate")


def test_predict_cli_reads_another_source_column(t5_run: tuple[Path, dict], tmp_path: Path) -> None:
    from tunelab.predict import main

    run_dir, _ = t5_run
    data = tmp_path / "new.jsonl"
    make_pairs(6, seed=4).rename(columns={"source": "body"})[["body"]].to_json(data, orient="records", lines=True)
    assert main([str(run_dir), str(data), "--source-column", "body", "-o", str(tmp_path / "p.jsonl")]) == 0
    assert pd.read_json(tmp_path / "p.jsonl", lines=True)["prediction"].str.len().gt(0).all()
