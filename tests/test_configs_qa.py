"""Every shipped QA task yaml composes with every model config and trains a step.

The Hub datasets (rajpurkar/squad, rajpurkar/squad_v2) are swapped for local files of the same
schema (id, title, context, question, answers{text, answer_start}; splits train + validation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.helpers import compose_train
from tests.qa_fixtures import build_tiny_qa_bert, capital_rows, write_rows
from tunelab.config import CONFIG_DIR
from tunelab.train import build_module, run

QA_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/qa@" in p.read_text())
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
QA_MODELS = {"minilm", "tiny", "bert", "bert-chinese", "roberta", "distilbert", "deberta-v3"}  # encoders with a QA head
HUB = {"squad": ["train", "validation"], "squad_v2": ["train", "validation"]}
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "progress=none",
         "trainer.num_sanity_val_steps=0", "task.data.max_samples={train: 64, validation: 32, test: 32}",
         "task.data.max_length=48", "task.data.stride=12", "task.data.batch_size=8"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qa_bert(tmp_path_factory.mktemp("tiny-qa"))


def test_qa_tasks_are_shipped() -> None:
    assert set(QA_TASKS) == {"squad", "squad_v2", "qa-json", "qa-csv"}
    assert set(MODELS) >= QA_MODELS


@pytest.mark.parametrize("task", QA_TASKS)
def test_every_qa_task_composes_with_every_qa_model(task: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model in sorted(QA_MODELS):
            cfg = compose("train", overrides=[f"task={task}", f"model={model}"])
            assert cfg.task.family == "qa" and cfg.task.monitor == "val/f1" == cfg.callbacks.model_checkpoint.monitor
            assert cfg.run_name == f"{task}-{model}-full" and cfg.model.name == model
    assert (cfg.task.data.max_length, cfg.task.data.stride, cfg.task.module.n_best, cfg.task.module.max_answer_length) == (
        384, 128, 20, 30)
    assert cfg.task.data.allow_no_answer == (task == "squad_v2")
    if task in HUB:
        assert cfg.task.data.splits == {"train": "train", "test": "validation"} and cfg.task.data.val_size == 2000


def _stand_in(task: str, tmp_path: Path) -> list[str]:
    """Local files in the task's source schema."""
    v2 = task == "squad_v2"
    if task in HUB:
        files = {}
        for i, split in enumerate(HUB[task]):
            rows = [r | {"id": f"{split}{j}", "title": "Capitals"}
                    for j, r in enumerate(capital_rows(60, seed=i, no_answer_every=3 if v2 else 0))]
            files[split] = write_rows(rows, tmp_path / f"{split}.jsonl")
        source = ", ".join(f"{s}: {p}" for s, p in files.items())
        return ["~task.data.source", "task.data.val_size=20",  # the yaml holds out 2,000 of SQuAD's 87,599
                f"+task.data.source={{_target_: tunelab.data.sources.load, path: json, data_files: {{{source}}}}}"]
    path = write_rows(capital_rows(60), tmp_path / ("data.csv" if task == "qa-csv" else "data.jsonl"))
    return [f"task.data.source.data_files.train={path}"]


@pytest.mark.parametrize("task", QA_TASKS)
def test_every_qa_task_instantiates_and_trains_a_step(task: str, tiny_qa: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=tiny", f"model.name_or_path={tiny_qa}", *SHORT,
                        *_stand_in(task, tmp_path))
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2
    assert 0 <= metrics["test"]["f1"] <= 100 and 0 <= metrics["test"]["exact_match"] <= metrics["test"]["f1"] + 1e-6
    if task in HUB:  # the official validation set is the test split; validation is held out from train
        assert metrics["data"] == {"train": 40, "validation": 20, "test": 32}
    if task == "squad_v2":
        assert {"has_ans_f1", "no_ans_f1"} <= set(metrics["test"])
    assert json.loads((tmp_path / "run" / "model" / "tunelab.json").read_text())["auto_class"].endswith(
        "AutoModelForQuestionAnswering")


def test_minilm_gets_a_qa_head(tmp_path: Path) -> None:
    class Data:
        def module_kwargs(self) -> dict:
            return {"with_no_answer": False}

    module = build_module(compose_train(tmp_path, "task=squad", "model=minilm"), Data())
    assert type(module.model).__name__ == "BertForQuestionAnswering" and module.model.qa_outputs.out_features == 2


@pytest.mark.parametrize("tuning", ["lora"])
def test_peft_tuning_on_qa_exports_and_reloads(tuning: str, tiny_qa: Path, tmp_path: Path) -> None:
    from tunelab.exported import load_run_model

    cfg = compose_train(tmp_path / "run", "task=qa-json", "model=tiny", f"model.name_or_path={tiny_qa}",
                        f"tuning={tuning}", *SHORT, *_stand_in("qa-json", tmp_path))
    run(cfg)
    model = load_run_model(tmp_path / "run").eval()
    batch = {"input_ids": torch.tensor([[2, 10, 11, 3, 12, 13, 3]]), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    with torch.no_grad():
        out = model(**batch)
    assert out.start_logits.shape == out.end_logits.shape == (1, 7)
