"""Token classification end to end: a tiny BERT learns the toy tagging set; its scores equal seqeval's on
the words it wrote out; the export loads in a transformers pipeline, through peft, and in tunelab-predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from transformers import pipeline

from tests.helpers import compose_train
from tests.ner_fixtures import tagged_rows, write_conll, write_jsonl
from tunelab.batch import META
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.exported import load_run_model
from tunelab.predict import main, predict
from tunelab.tasks.token_classification import TokenClassificationModule
from tunelab.train import run

TUNINGS = sorted(p.stem for p in (CONFIG_DIR / "tuning").glob("*.yaml") if p.stem != "distill")


pytestmark = pytest.mark.usefixtures("one_thread")


def ner_overrides(tiny_bert: Path, train: Path, *extra: str) -> list[str]:
    return ["task=ner-json", f"task.data.source.data_files.train={train}", f"model.name_or_path={tiny_bert}",
            "model.name=tiny-test", "progress=none", "logger=csv", "scheduler=linear", "task.data.batch_size=16",
            "callbacks.early_stopping=null", "trainer.log_every_n_steps=5", *extra]


@pytest.fixture(scope="module")
def ner_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ner")
    train = write_jsonl(tagged_rows(480), folder / "train.jsonl")
    out = folder / "run"
    metrics = run(compose_train(out, *ner_overrides(tiny_bert, train, "optimizer.lr=1e-2", "trainer.max_epochs=8")))
    return out, metrics


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples" / "test.jsonl").read_text().splitlines()]


def test_a_tiny_bert_learns_the_tagging_set_and_scores_equal_seqeval(ner_run: tuple[Path, dict]) -> None:
    run_dir, metrics = ner_run
    test = metrics["test"]
    assert test["f1"] > 0.6, test  # chance (tags drawn by frequency) is below 0.1
    rows = samples(run_dir)
    assert len(rows) == 48  # the whole carved test split (10%): every sentence written with its words
    gold, predicted = [r["gold"] for r in rows], [r["predicted"] for r in rows]
    assert test["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    assert test["precision"] == pytest.approx(precision_score(gold, predicted), abs=1e-12)
    assert test["recall"] == pytest.approx(recall_score(gold, predicted), abs=1e-12)
    assert test["accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    assert {"f1/FRUIT", "f1/WATER", "support/FRUIT", "recall/WATER"} <= set(test)
    assert metrics["val"]["f1"] > 0.6


@pytest.mark.parametrize("aggregation", ["first", "simple"])
def test_the_export_tags_words_in_a_transformers_pipeline(aggregation: str, ner_run: tuple[Path, dict]) -> None:
    """``first`` (a word's tag is its first sub-token's, as trained) finds the module's entities in every
    sentence; ``simple`` (every sub-token's own tag) does in sentences without split words ("kiwi")."""
    run_dir, _ = ner_run
    tagger = pipeline("token-classification", model=str(run_dir / "model"), aggregation_strategy=aggregation, device="cpu")
    assert set(tagger.model.config.id2label.values()) == {"O", "B-FRUIT", "I-FRUIT", "B-WATER", "I-WATER"}
    rows = [r for r in samples(run_dir) if aggregation == "first" or "kiwi" not in r["tokens"]]
    assert len(rows) > 20
    for row in rows:
        expected = [(kind, " ".join(row["tokens"][start:end + 1])) for kind, start, end in row["predicted_entities"]]
        text = " ".join(row["tokens"])
        found = [(e["entity_group"], text[e["start"]:e["end"]]) for e in tagger(text)]
        assert found == expected, row


def test_predict_writes_tags_per_word_and_scores_a_tagged_file(ner_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, metrics = ner_run
    rows = samples(run_dir)
    tagged = write_jsonl([{"tokens": r["tokens"], "tags": r["gold"]} for r in rows], tmp_path / "test.jsonl")
    result = predict(run_dir, tagged)
    assert result["metrics"]["f1"] == pytest.approx(metrics["test"]["f1"], abs=1e-12)
    written = [json.loads(line) for line in Path(result["predictions"]).read_text().splitlines()]
    assert Path(result["predictions"]).suffix == ".jsonl"
    assert [w["predicted_tags"] for w in written] == [r["predicted"] for r in rows]
    words = write_conll([{"tokens": r["tokens"]} for r in rows], tmp_path / "words.conll")
    result = predict(run_dir, words)
    assert "metrics" not in result
    written = [json.loads(line) for line in Path(result["predictions"]).read_text().splitlines()]
    assert [w["predicted_tags"] for w in written] == [r["predicted"] for r in rows]


@pytest.mark.parametrize("tuning", TUNINGS)
def test_every_tuning_method_trains_and_its_export_reloads(tuning: str, tiny_bert: Path, tmp_path: Path) -> None:
    train = write_jsonl(tagged_rows(64), tmp_path / "train.jsonl")
    out = tmp_path / "run"
    extra = ["tuning.n_blocks=1"] if tuning == "freeze" else []  # the preset's 4 are for 6-layer MiniLM
    cfg = compose_train(out, *ner_overrides(tiny_bert, train, f"tuning={tuning}", "trainer.max_steps=3",
                                            "trainer.limit_val_batches=1", *extra))
    if tuning == "qlora" and not torch.cuda.is_available():  # its CPU run: tests/tuning/test_qlora.py
        with pytest.raises(ConfigError, match="tuning=qlora needs a CUDA GPU"):
            run(cfg)
        return
    run(cfg)
    rows = samples(out)
    written = write_jsonl([{"tokens": r["tokens"]} for r in rows], tmp_path / "words.jsonl")
    predictions = [json.loads(line)["predicted_tags"] for line in Path(predict(out, written)["predictions"]).read_text().splitlines()]
    assert predictions == [r["predicted"] for r in rows]  # the reloaded export (head included) tags as the module did
    model = load_run_model(out)
    assert type(model).__name__.endswith("ForTokenClassification") or "Peft" in type(model).__name__


def test_the_tokens_column_flag_of_tunelab_predict(ner_run: tuple[Path, dict], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = ner_run
    rows = samples(run_dir)[:5]
    renamed = write_jsonl([{"words": r["tokens"]} for r in rows], tmp_path / "renamed.jsonl")
    assert main([str(run_dir), str(renamed), "--tokens-column", "words"]) == 0
    written = Path(json.loads(capsys.readouterr().out)["predictions"]).read_text().splitlines()
    assert [json.loads(line)["predicted_tags"] for line in written] == [r["predicted"] for r in rows]


@pytest.mark.parametrize(("mode", "f1"), [("default", 0.8), ("strict", 2 / 3)])
def test_entity_mode_strict_counts_only_well_formed_entities(mode: str, f1: float, tiny_bert: Path) -> None:
    """Gold: FRUIT at word 0 and WATER at words 2-3; predicted: the same, but WATER starts with I- (broken
    in IOB2) and an extra I-FRUIT at word 5. Default mode: 3 predicted entities, 2 right (F1 0.8); strict:
    only FRUIT is an entity, right (precision 1, recall 1/2)."""
    labels = ["O", "B-FRUIT", "I-FRUIT", "B-WATER", "I-WATER"]
    module = TokenClassificationModule(labels, model={"name_or_path": str(tiny_bert)}, optimizer={"_target_": "torch.optim.SGD"},
                                       entity_mode=mode, tag_scheme="IOB2", num_samples=0)
    gold, predicted = [1, 0, 3, 4, 0, 0], [1, 0, 4, 4, 0, 2]
    logits = torch.nn.functional.one_hot(torch.tensor([[0, *predicted, 0]]), len(labels)).float()
    batch = {"input_ids": torch.zeros(1, 8, dtype=torch.long),
             META: {"example_id": [0], "word_ids": [list(range(6))], "positions": [list(range(1, 7))],
                    "word_tags": [gold]}}
    module.update_metrics(module.val_metrics, type("Out", (), {"logits": logits})(), batch, "val")
    assert module.metric_values(module.val_metrics)["val/f1"] == pytest.approx(f1)
