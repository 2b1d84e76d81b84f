"""Every shipped token-classification task yaml composes with every encoder and trains a step.

Hub datasets (CoNLL-2003, WNUT-17) are swapped for local files with their columns (tokens, ner_tags)
and split names; tweets-ner is the real offline set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers import compose_train
from tests.ner_fixtures import tagged_rows, write_conll, write_jsonl
from tunelab.config import CONFIG_DIR
from tunelab.train import run

NER_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/token_classification@" in p.read_text())
ENCODERS = {"minilm", "tiny", "bert", "bert-chinese", "roberta", "distilbert", "deberta-v3"}
HUB = {"conll2003": ["train", "validation", "test"], "wnut_17": ["train", "validation", "test"]}
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "progress=none",
         "trainer.num_sanity_val_steps=0", "task.data.max_samples={train: 64, validation: 32, test: 32}"]


def test_token_classification_tasks_are_shipped() -> None:
    assert set(NER_TASKS) == {"tweets-ner", "conll2003", "wnut_17", "ner-conll", "ner-json"}


@pytest.mark.parametrize("task", NER_TASKS)
def test_every_task_composes_with_every_encoder(task: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model in sorted(ENCODERS):
            cfg = compose("train", overrides=[f"task={task}", f"model={model}"])
            assert cfg.task.family == "token_classification" and cfg.callbacks.model_checkpoint.monitor == "val/f1"
            assert cfg.run_name == f"{task}-{model}-full"
    if task in HUB:
        assert cfg.task.data.tags_column == "ner_tags" and cfg.task.data.source.revision == "refs/convert/parquet"


def _stand_in(task: str, tmp_path: Path) -> list[str]:
    if task in HUB:
        files = {}
        for i, split in enumerate(HUB[task]):
            rows = [{"tokens": r["tokens"], "ner_tags": r["tags"]} for r in tagged_rows(60, seed=i)]
            files[split] = write_jsonl(rows, tmp_path / f"{split}.jsonl")
        source = ", ".join(f"{s}: {p}" for s, p in files.items())
        return ["~task.data.source", f"+task.data.source={{_target_: tunelab.data.sources.load, path: json, "
                                     f"data_files: {{{source}}}}}"]
    if task == "ner-conll":
        return [f"task.data.source.data_files.train={write_conll(tagged_rows(80), tmp_path / 'train.conll', docstart=True)}"]
    if task == "ner-json":
        return [f"task.data.source.data_files.train={write_jsonl(tagged_rows(80), tmp_path / 'train.jsonl')}"]
    return []  # tweets-ner: the offline set itself


@pytest.mark.parametrize("task", NER_TASKS)
def test_every_task_instantiates_and_trains_a_step(task: str, tiny_bert: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=tiny", f"model.name_or_path={tiny_bert}", *SHORT,
                        *_stand_in(task, tmp_path))
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2 and 0 <= metrics["test"]["f1"] <= 1
    if task == "tweets-ner":  # ten entity types, IOB2, carved splits
        assert {f"support/{t}" for t in ("person", "geo-loc", "company", "musicartist")} <= set(metrics["test"])
    if task in HUB:
        assert metrics["data"] == {"train": 60, "validation": 32, "test": 32}
