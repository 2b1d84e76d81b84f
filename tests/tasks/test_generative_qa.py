"""Question answering by generation (task=squad-gen): generated answers scored by the official SQuAD v1.1
rule against every gold answer; a tiny decoder and a tiny T5 learn a toy set, and tunelab-predict scores it."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import CLASS_WORDS, NOISE
from tests.decoder_fixtures import tiny_llama, tiny_qwen2  # noqa: F401
from tests.helpers import compose_train
from tests.metrics.test_qa import OfficialSquadV11
from tests.qa_fixtures import write_rows
from tests.seq2seq_fixtures import tiny_t5  # noqa: F401
from tunelab.metrics.qa import normalize_answer
from tunelab.metrics.seq2seq import generation_metric_values, generation_metrics, update_generation_metrics
from tunelab.predict import predict
from tunelab.train import run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_generated_answers_are_scored_by_the_official_script_against_all_golds() -> None:
    rng = random.Random(3)
    words = ["The", "cat", "a", "sat", "on", "mat", "Mat,", "dog", ".", "U.S.", "(red)", "Éclair"]
    golds = [[" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(rng.randint(1, 3))] for _ in range(120)]
    golds = [g for g in golds if all(normalize_answer(a) for a in g)]  # v1.1 golds are spans: none normalises to ""
    preds = [" ".join(rng.choices(words, k=rng.randint(0, 3))) for _ in golds]
    metrics = generation_metrics(["squad"])
    for start in range(0, len(golds), 32):  # batches: the first gold is the "reference", all golds score
        batch = slice(start, start + 32)
        update_generation_metrics(metrics, preds[batch], [g[0] for g in golds[batch]], torch.ones(len(preds[batch])),
                                  golds[batch])
    ours = generation_metric_values(metrics.compute())
    official = OfficialSquadV11.evaluate(golds, preds)
    assert 0 < official["exact_match"] < official["f1"] < 100
    assert ours["exact_match"] == pytest.approx(official["exact_match"], abs=1e-9)
    assert ours["f1"] == pytest.approx(official["f1"], abs=1e-9)


def topic_rows(n: int, seed: int = 0) -> list[dict]:
    """The context holds one topic word among filler words; the answer names its topic by the topic's first
    word (words in both tiny tokenizers' vocabularies)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(list(CLASS_WORDS))
        context = [rng.choice(CLASS_WORDS[topic][1:]), *rng.sample(NOISE, 4)]
        rng.shuffle(context)
        rows.append({"id": f"q{i}", "question": "the a", "context": " ".join(context),
                     "answers": {"text": [CLASS_WORDS[topic][0]], "answer_start": [0]}})
    return rows


def qa_overrides(model_args: list[str], data: Path, *extra: str) -> list[str]:
    return [
        "task=squad-gen", "~task.data.splits", "task.data.source.path=json", f"+task.data.source.data_files.train={data}",
        "task.data.val_size=0.1", *model_args, "progress=none", "logger=csv", "task.data.batch_size=16", "task.data.max_length=96",
        "task.data.max_target_length=8", "task.module.generation.max_new_tokens=6", "trainer.num_sanity_val_steps=0",
        "callbacks.early_stopping=null", "scheduler=linear", *extra,
    ]


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_qwen2", "tiny_t5"])
def test_a_tiny_model_learns_to_generate_the_answer(model_fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    data = write_rows(topic_rows(320), tmp_path / "topics.jsonl")
    path = request.getfixturevalue(model_fixture)
    model = (["model=t5-small", f"model.name_or_path={path}", "optimizer.lr=3e-3"] if model_fixture == "tiny_t5"
             else ["model=smollm2-135m", f"model.name_or_path={path}", "optimizer.lr=3e-3", "trainer.max_epochs=16"])
    out = tmp_path / "run"
    metrics = run(compose_train(out, *qa_overrides(["trainer.max_epochs=8", *model], data)))
    assert set(metrics["test"]) >= {"exact_match", "f1", "loss"}
    assert metrics["test"]["exact_match"] > 60  # chance: 33 (one of three topic names)
    result = predict(out, data, tmp_path / "answers.jsonl")
    assert result["metrics"]["exact_match"] > 60
    answers = pd.read_json(result["predictions"], lines=True)
    assert len(answers) == 320 and answers["prediction"].notna().all()
