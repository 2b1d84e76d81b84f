"""Extractive QA end to end: a tiny BERT learns to find the asked country's capital; the export
reloads in plain transformers and gives the same logits; tunelab-predict writes answers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, MarianConfig

from tests.helpers import compose_train
from tests.qa_fixtures import build_qa_tokenizer, build_tiny_qa_bert, capital_rows, qa_overrides, write_rows
from tunelab.errors import ConfigError
from tunelab.metrics.qa import best_spans, span_text
from tunelab.predict import main as predict_main
from tunelab.tasks.qa import QuestionAnsweringModule
from tunelab.train import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """8 epochs of the tiny QA BERT on 400 questions (320 train / 40 val / 40 test)."""
    root = tmp_path_factory.mktemp("qa")
    model = build_tiny_qa_bert(root / "model")
    data = write_rows(capital_rows(400, seed=0, n_distractors=2), root / "capitals.jsonl")
    out = root / "run"
    return out, run(compose_train(out, *qa_overrides(model, data, "trainer.max_epochs=8", "task.module.num_samples=5")))


def test_qa_learns_the_named_span(qa_run: tuple[Path, dict]) -> None:
    out, metrics = qa_run
    log = pd.read_csv(out / "logs" / "metrics.csv")
    loss = log["train/loss_epoch"].dropna().tolist()
    val_f1 = log["val/f1"].dropna().tolist()
    assert len(loss) == 8 and loss[-1] < 0.3 * loss[0], loss
    assert max(val_f1) > val_f1[0] + 10, val_f1  # F1 rises over the epochs
    assert metrics["test"]["f1"] > 75 and metrics["test"]["exact_match"] > 70, metrics["test"]
    assert metrics["test"]["f1"] >= metrics["test"]["exact_match"]
    assert set(metrics["val"]) == {"loss", "exact_match", "f1"}
    samples = [json.loads(line) for line in (out / "samples" / "test.jsonl").read_text().splitlines()]
    assert [s["row"] for s in samples] == list(range(5))
    assert {"question", "context", "references", "prediction", "score"} <= set(samples[0])
    assert all(s["prediction"] in s["context"] for s in samples)


def test_export_reloads_in_transformers_and_predicts_the_same(qa_run: tuple[Path, dict]) -> None:
    out, metrics = qa_run
    module = QuestionAnsweringModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu").eval()
    exported = AutoModelForQuestionAnswering.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    context = "people in rome like music . the capital of norland is oslo ."
    batch = tokenizer(["what is the capital of norland ?"], [context], return_tensors="pt", return_offsets_mapping=True)
    offsets = batch.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        ours, theirs = module.model(**batch), exported(**batch)
    torch.testing.assert_close(ours.start_logits, theirs.start_logits)
    torch.testing.assert_close(ours.end_logits, theirs.end_logits)
    # (transformers 5 removed the question-answering pipeline; decode the exported model's logits by hand)
    context_tokens = [i for i, s in enumerate(batch.sequence_ids(0)) if s == 1]
    score, start, end = best_spans(theirs.start_logits, theirs.end_logits, torch.tensor([context_tokens[0]]),
                                   torch.tensor([context_tokens[-1]]))
    assert span_text(context, offsets, start.item(), end.item(), score.item()) == ("oslo", context.index("oslo"))


def test_tunelab_predict_writes_one_answer_per_row(qa_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    out, _ = qa_run
    rows = capital_rows(30, seed=9, n_distractors=2)
    labelled = write_rows(rows, tmp_path / "new.jsonl")
    assert predict_main([str(out), str(labelled), "-o", str(tmp_path / "pred.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    written = pd.read_json(tmp_path / "pred.jsonl", lines=True)
    assert written["question"].tolist() == [r["question"] for r in rows]  # input order kept
    assert {"answer", "answer_start", "score"} <= set(written.columns)
    for answer, start, context in zip(written["answer"], written["answer_start"], written["context"], strict=True):
        assert context[start : start + len(answer)] == answer
    exact = 100 * sum(a == r["answers"]["text"][0] for a, r in zip(written["answer"], rows, strict=True)) / len(rows)
    assert result["metrics"]["exact_match"] == exact  # float64 end to end: the official script's percentage
    assert exact > 60
    unlabelled = write_rows([{"question": r["question"], "context": r["context"]} for r in rows], tmp_path / "u.jsonl")
    assert predict_main([str(out), str(unlabelled), "-o", str(tmp_path / "u.csv")]) == 0
    assert "metrics" not in json.loads(capsys.readouterr().out)
    assert pd.read_csv(tmp_path / "u.csv", keep_default_na=False)["answer"].tolist() == written["answer"].tolist()
    renamed = write_rows([{"q": r["question"], "passage": r["context"], "gold": r["answers"]} for r in rows],
                         tmp_path / "renamed.jsonl")
    assert predict_main([str(out), str(renamed), "-o", str(tmp_path / "r.jsonl"), "--question-column", "q",
                         "--context-column", "passage", "--answers-column", "gold"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["exact_match"] == pytest.approx(exact)
    assert pd.read_json(tmp_path / "r.jsonl", lines=True)["answer"].tolist() == written["answer"].tolist()


def test_a_model_without_qa_head_is_a_clear_error(tmp_path: Path) -> None:
    MarianConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16).save_pretrained(tmp_path)
    build_qa_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match=r"\(marian\) has no AutoModelForQuestionAnswering head"):
        QuestionAnsweringModule(model={"name": "marian", "name_or_path": str(tmp_path), "from_scratch": True},
                                optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3})
