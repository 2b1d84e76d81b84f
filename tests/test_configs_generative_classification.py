"""Every shipped classification-by-generation task yaml (``_base/generative_classification``) composes with decoders
and T5 and trains a step on a tiny Llama; task=bbc-news-gen holds out the very rows task=bbc-news does.

Hub datasets are replaced by local files of the same schema (columns, label names, split names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.test_generative_classification import topic_frame
from tests.decoder_fixtures import tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import tiny_t5  # noqa: F401
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule, run

GEN_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/generative_classification@" in p.read_text())
MODELS = ["smollm2-135m", "qwen2.5-0.5b-instruct", "llama-3.2-1b", "t5-small"]
# Hub schemas: the text column, the label names, the source's splits.
HUB_SCHEMAS = {"sentiment-gen": ("sentence", ["negative", "positive"], ["train", "validation"])}
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "progress=none",
         "logger=csv", "trainer.num_sanity_val_steps=0", "task.data.max_samples={train: 32, validation: 8, test: 8}"]


def test_the_generative_classification_tasks_exist() -> None:
    assert {"bbc-news-gen", "sentiment-gen"} <= set(GEN_TASKS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", GEN_TASKS)
def test_every_task_composes_with_decoders_and_t5(task: str, model: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"task={task}", f"model={model}")
    assert cfg.task.family == "generative_classification"
    assert cfg.task.monitor == "val/accuracy" == cfg.callbacks.model_checkpoint.monitor and cfg.task.monitor_mode == "max"
    assert cfg.task.data.architecture == cfg.task.module.architecture == ("encoder-decoder" if model == "t5-small" else "decoder")
    assert cfg.task.module.scoring == "likelihood" and cfg.task.data.labels


def _stand_in(task: str, tmp_path: Path) -> list[str]:
    """Swap a Hub source for local json files of its schema."""
    if task not in HUB_SCHEMAS:
        return []  # offline data, the real thing
    column, labels, splits = HUB_SCHEMAS[task]
    files = []
    for i, split in enumerate(splits):
        frame = topic_frame(60 if split == "train" else 16, seed=i)
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps({column: text, "label": labels[j % len(labels)], "idx": j}) + "\n"
                                for j, text in enumerate(frame.text)))
        files.append(f"{split}: {path}")
    return ["~task.data.source", "+task.data.source={_target_: tunelab.data.sources.load, path: json, data_files: {"
            + ", ".join(files) + "}}", "task.data.val_size=8"]


@pytest.mark.parametrize("task", GEN_TASKS)
def test_every_task_trains_a_step_on_a_decoder(task: str, tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=smollm2-135m", f"model.name_or_path={tiny_llama}",
                        *SHORT, *_stand_in(task, tmp_path))
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2
    assert {"accuracy", "macro_f1", "mcc", "loss", *(f"f1_per_class/{x}" for x in cfg.task.data.labels)} <= set(metrics["test"])
    sample = json.loads((tmp_path / "run" / "samples" / "test.jsonl").read_text().splitlines()[0])
    assert sample["reference"] in cfg.task.data.labels and set(sample["scores"]) == set(cfg.task.data.labels)


def test_topic_names_outside_the_tiny_t5_vocabulary_are_refused(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    """The tiny T5 reads every BBC topic as <unk>: the labels cannot be told apart, said before any data is read."""
    cfg = compose_train(tmp_path / "run", "task=bbc-news-gen", "model=t5-small", f"model.name_or_path={tiny_t5}", *SHORT)
    with pytest.raises(ConfigError, match=r"task\.data\.labels: 'business' and 'entertainment' tokenize to the same"):
        run(cfg)


def test_bbc_news_gen_holds_out_the_same_rows_as_bbc_news(tiny_llama: Path, tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    held_out = {}
    for task, model in (("bbc-news", f"model.name_or_path={tiny_bert}"), ("bbc-news-gen", f"model.name_or_path={tiny_llama}")):
        cfg = compose_train(tmp_path, f"task={task}", "model=smollm2-135m" if task.endswith("gen") else "model=tiny", model,
                            "task.data.max_samples={train: 8, validation: null, test: null}")
        datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
        datamodule.setup("fit")
        held_out[task] = {split: datamodule.examples[split]["file"] for split in ("validation", "test")}
        assert datamodule.examples["test"].features["labels"].names == list(cfg.task.data.labels)
    # 225: carving holds out whole groups of BBC's 100 repeated articles (a row-wise 10% would be 222)
    assert held_out["bbc-news"] == held_out["bbc-news-gen"] and len(held_out["bbc-news"]["test"]) == 225
