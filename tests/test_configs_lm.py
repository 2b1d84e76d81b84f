"""Every language-modelling task yaml composes with its valid models and trains a step on a tiny model.

Hub corpora (WikiText) run on a local stand-in of the same schema (one `text` column of raw lines,
blank lines and ` = Heading = ` lines included; train/validation/test splits).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose_train
from tests.lm_fixtures import lm_lines, tiny_gpt2, write_lines  # noqa: F401
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.tasks import MaskedLMModule
from tunelab.train import build_module, run

MLM_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/mlm@" in p.read_text())
CLM_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/clm@" in p.read_text())
MLM_MODELS = ["minilm", "tiny", "bert", "bert-chinese", "roberta", "distilbert", "deberta-v3"]  # README: encoders
CLM_MODELS = ["gpt2"]
SHORT = [
    "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "progress=none",
    "trainer.num_sanity_val_steps=0", "task.data.max_samples={train: 64, validation: 16, test: 16}",
    "task.data.block_size=32", "task.data.batch_size=4", "task.data.eval_batch_size=4",
]


def test_the_documented_tasks_exist() -> None:
    assert set(MLM_TASKS) == {"mlm", "bbc-news-mlm", "wikitext-mlm"} and set(CLM_TASKS) == {"clm", "wikitext-clm"}


@pytest.mark.parametrize("task,model", [(t, m) for t in MLM_TASKS for m in MLM_MODELS] + [(t, m) for t in CLM_TASKS for m in CLM_MODELS])
def test_task_composes_with_each_valid_model(task: str, model: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"task={task}", f"model={model}")
    assert cfg.task.family == "lm" and cfg.task.monitor == "val/perplexity" and cfg.task.monitor_mode == "min"
    assert cfg.task.data.objective == ("mlm" if task in MLM_TASKS else "clm")
    assert cfg.callbacks.model_checkpoint.monitor == "val/perplexity"


def _wikitext_standin(tmp_path: Path) -> list[str]:
    files = []
    for i, split in enumerate(("train", "validation", "test")):
        rows = [""]
        for j, line in enumerate(lm_lines(80 if split == "train" else 20, seed=i)):
            rows += [f" = Section {j} = \n", "", f" {line} \n"] if j % 10 == 0 else [f" {line} \n"]
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
        files.append(f"{split}: {path}")
    return ["~task.data.source", "+task.data.source={_target_: tunelab.data.sources.load, path: json, data_files: {" + ", ".join(files) + "}}"]


@pytest.mark.parametrize("task", MLM_TASKS + CLM_TASKS)
def test_every_lm_task_trains_a_step(task: str, tiny_bert: Path, tiny_gpt2: Path, tmp_path: Path) -> None:  # noqa: F811
    model = ["model=tiny", f"model.name_or_path={tiny_bert}"] if task in MLM_TASKS else ["model=gpt2", f"model.name_or_path={tiny_gpt2}"]
    if task.startswith("wikitext"):
        extra = _wikitext_standin(tmp_path)
    elif task in ("mlm", "clm"):
        extra = [f"task.data.source.data_files.train={write_lines(tmp_path / 'domain.txt', lm_lines(120))}"]
    else:
        extra = []  # bbc-news-mlm: the offline corpus itself
    metrics = run(compose_train(tmp_path / "run", f"task={task}", *model, *SHORT, *extra))
    assert metrics["train"]["steps"] == 2 and metrics["test"]["perplexity"] > 1.0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    if task.startswith("wikitext"):
        assert metrics["data"] == {"train": 64, "validation": 16, "test": 16}  # the source's own splits (blank rows dropped)


def test_mlm_on_minilm_instantiates_for_real(tmp_path: Path) -> None:
    class Data:
        def module_kwargs(self) -> dict:
            return {"objective": "mlm"}

    module = build_module(compose_train(tmp_path, "task=bbc-news-mlm", "model=minilm"), Data())
    assert isinstance(module, MaskedLMModule) and type(module.model).__name__ == "BertForMaskedLM"
    assert module.model.cls.predictions.decoder.weight is module.model.bert.embeddings.word_embeddings.weight  # tied


@pytest.mark.parametrize(
    "task,model,match",
    [
        ("mlm", "gpt2", r"task=mlm needs a tokenizer with a mask token.*use task=clm"),
        ("clm", "tiny", r"is a bidirectional encoder.*Use task=mlm for encoders"),
    ],
)
def test_wrong_pairings_fail_clearly(task: str, model: str, match: str, tiny_bert: Path, tiny_gpt2: Path, tmp_path: Path) -> None:  # noqa: F811
    path = tiny_gpt2 if model == "gpt2" else tiny_bert
    data = write_lines(tmp_path / "d.txt", lm_lines(40))
    cfg = compose_train(tmp_path / "run", f"task={task}", f"model={model}", f"model.name_or_path={path}", "model.from_scratch=false",
                        f"task.data.source.data_files.train={data}", *SHORT)
    with pytest.raises(ConfigError, match=match):
        run(cfg)
