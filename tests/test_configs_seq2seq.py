"""Every shipped seq2seq task yaml composes with the seq2seq models and trains a step.

Hub datasets are replaced by local files of the same schema (columns, translation dicts, split
names); Hub models by the tiny T5 / tiny BERT2BERT with the model yaml's other keys kept (T5's
task prefixes, the encoder_decoder spec). Wrong pairings fail with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data.test_instruct import alpaca_rows, write_jsonl
from tests.decoder_fixtures import tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import SEQ2SEQ_FAST, make_pairs, tiny_bert_encoder, tiny_t5  # noqa: F401
from tests.tasks.test_generative_qa import topic_rows
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.train import run

SEQ2SEQ_TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if "_base/seq2seq@" in p.read_text())
SEQ2SEQ_MODELS = ["t5-small", "bart-base", "marian-en-ro", "minilm2minilm"]
DECODERS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if "architecture: decoder" in p.read_text())
# Hub schemas: (source column, target column) or the translation dict's languages; source splits.
HUB_SCHEMAS = {
    "xsum": (("document", "summary"), ["train", "validation", "test"]),
    "cnn_dailymail": (("article", "highlights"), ["train", "validation", "test"]),
    "wmt16-ro-en": ({"translation": ("en", "ro")}, ["train", "validation", "test"]),
}
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "task.data.max_samples={train: 32, validation: 8, test: 8}"]


def test_the_seq2seq_options_exist() -> None:
    assert {"xsum", "cnn_dailymail", "bbc-headlines", "wmt16-ro-en", "parallel", "instruct", "chitchat",
            "squad-gen"} <= set(SEQ2SEQ_TASKS)
    assert all((CONFIG_DIR / "model" / f"{m}.yaml").is_file() for m in SEQ2SEQ_MODELS)


@pytest.mark.parametrize("model", SEQ2SEQ_MODELS + DECODERS)
@pytest.mark.parametrize("task", SEQ2SEQ_TASKS)
def test_every_seq2seq_task_composes_with_every_seq2seq_model(task: str, model: str, tmp_path: Path) -> None:
    extra = [f"task.data.source.data_files.train={tmp_path}/x.csv"] if task in ("parallel", "instruct") else []
    cfg = compose_train(tmp_path, f"task={task}", f"model={model}", *extra)
    assert cfg.task.family == "seq2seq" and cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor
    prefix = cfg.task.data.source_prefix
    if model == "t5-small" and task in ("xsum", "cnn_dailymail", "bbc-headlines"):
        assert prefix == "summarize: "
    elif model == "t5-small" and task == "wmt16-ro-en":
        assert prefix == "translate English to Romanian: "
    else:
        assert not prefix
    assert cfg.task.data.architecture == cfg.task.module.architecture == ("decoder" if model in DECODERS else "encoder-decoder")
    monitors = {"wmt16-ro-en": "val/sacrebleu", "parallel": "val/sacrebleu", "chitchat": "val/loss", "squad-gen": "val/f1"}
    assert cfg.task.monitor == monitors.get(task, "val/rougeL")


def _stand_in(task: str, tmp_path: Path) -> list[str]:
    """Swap the task's source for local json files of the Hub dataset's schema."""
    if task in ("bbc-headlines", "chitchat"):
        return []  # offline data, the real thing
    if task == "instruct":
        return [f"task.data.source.data_files.train={write_jsonl(tmp_path / 'alpaca.jsonl', alpaca_rows(60))}"]
    if task == "squad-gen":  # rajpurkar/squad's layout and split names
        files = [f"{split}: {write_jsonl(tmp_path / f'{split}.jsonl', topic_rows(n, seed=i))}"
                 for i, (split, n) in enumerate((("train", 60), ("validation", 16)))]
        return ["~task.data.source", "+task.data.source={_target_: tunelab.data.sources.load, path: json, data_files: {"
                + ", ".join(files) + "}}", "task.data.val_size=8"]
    if task == "parallel":
        path = tmp_path / "pairs.csv"
        make_pairs(60).to_csv(path, index=False)
        return [f"task.data.source.data_files.train={path}"]
    columns, splits = HUB_SCHEMAS[task]
    files = []
    for i, split in enumerate(splits):
        rows = make_pairs(60 if split == "train" else 16, seed=i)
        if isinstance(columns, dict):
            (name, (src, tgt)), = columns.items()
            records = [{name: {src: s, tgt: t}} for s, t in zip(rows.source, rows.target, strict=True)]
        else:
            records = [{columns[0]: s, columns[1]: t, "id": str(j)} for j, (s, t) in enumerate(zip(rows.source, rows.target, strict=True))]
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        files.append(f"{split}: {path}")
    return ["~task.data.source", "+task.data.source={_target_: tunelab.data.sources.load, path: json, data_files: {"
            + ", ".join(files) + "}}"]


@pytest.mark.parametrize("task", SEQ2SEQ_TASKS)
def test_every_seq2seq_task_trains_a_step(task: str, tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=t5-small", f"model.name_or_path={tiny_t5}",
                        *SEQ2SEQ_FAST[:-2], *SHORT, *_stand_in(task, tmp_path))
    check_a_step(run(cfg), task, tmp_path)


def check_a_step(metrics: dict, task: str, tmp_path: Path) -> None:
    assert metrics["train"]["steps"] == 2
    expected = {"parallel": {"sacrebleu", "chrf"}, "wmt16-ro-en": {"sacrebleu", "chrf"},
                "instruct": {"rouge1", "rouge2", "rougeL", "chrf"}, "chitchat": {"rouge1", "rouge2", "rougeL", "chrf"},
                "squad-gen": {"exact_match", "f1"}}
    assert expected.get(task, {"rouge1", "rouge2", "rougeL"}) | {"loss", "gen_len"} == set(metrics["test"])
    assert (tmp_path / "run" / "samples" / "test.jsonl").is_file()


@pytest.mark.parametrize("task", SEQ2SEQ_TASKS)
def test_every_seq2seq_task_trains_a_step_on_a_decoder(task: str, tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    """Each task's prompt template (or chat template) on a tiny Llama: prompt -> completion."""
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=smollm2-135m", f"model.name_or_path={tiny_llama}",
                        *SEQ2SEQ_FAST[:-2], *SHORT, *_stand_in(task, tmp_path))
    check_a_step(run(cfg), task, tmp_path)
    sample = json.loads((tmp_path / "run" / "samples" / "test.jsonl").read_text().splitlines()[0])
    assert sample["source"] and sample["reference"]


def test_bbc_headlines_trains_a_step_with_a_tiny_bert2bert(tiny_bert_encoder: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", "task=bbc-headlines", "model=minilm2minilm", f"model.name_or_path={tiny_bert_encoder}",
                        f"model.encoder_decoder.encoder={tiny_bert_encoder}", f"model.encoder_decoder.decoder={tiny_bert_encoder}",
                        *SEQ2SEQ_FAST[:-2], *SHORT)
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2 and metrics["data"]["test"] == 8
    sample = json.loads((tmp_path / "run" / "samples" / "test.jsonl").read_text().splitlines()[0])
    assert sample["reference"] and sample["source"]  # headline and body of a real article


def test_encoder_only_model_on_a_seq2seq_task_says_what_to_use(tiny_bert_encoder: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", "task=xsum", "model=minilm", f"model.name_or_path={tiny_bert_encoder}",
                        *SEQ2SEQ_FAST[:-2], *SHORT, *_stand_in("xsum", tmp_path))
    with pytest.raises(ConfigError, match=r"not an encoder-decoder.*model=minilm2minilm.*t5-small"):
        run(cfg)


def test_bert2bert_model_on_a_classification_task_is_refused(tiny_bert_encoder: Path, tmp_path: Path) -> None:  # noqa: F811
    from transformers import AutoModelForSequenceClassification

    from tunelab.models import load_model

    cfg = compose_train(tmp_path, "model=minilm2minilm", f"model.name_or_path={tiny_bert_encoder}")
    with pytest.raises(ConfigError, match=r"encoder_decoder builds a seq2seq EncoderDecoderModel.*AutoModelForSequenceClassification"):
        load_model(AutoModelForSequenceClassification, cfg.model)
