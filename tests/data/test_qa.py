"""QA data: SQuAD-layout validation, windows with a stride, answer positions and offsets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from transformers import PreTrainedTokenizerFast

from tests.qa_fixtures import build_qa_tokenizer, capital_example, capital_rows, write_rows
from tunelab.data.qa import QuestionAnsweringDataModule
from tunelab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_qa_tokenizer()


def datamodule(tokenizer: PreTrainedTokenizerFast, path: Path, **kwargs) -> QuestionAnsweringDataModule:
    source = {"_target_": "tunelab.data.sources.load", "data_files": {"train": str(path)}}
    return QuestionAnsweringDataModule(tokenizer, source=source, **kwargs)


def recovered(features, i: int) -> str:
    offsets, context = features[i]["offset_mapping"], features[i]["context"]
    return context[offsets[features[i]["start_positions"]][0] : offsets[features[i]["end_positions"]][1]]


@pytest.mark.parametrize("max_length,stride", [(24, 6), (32, 12), (64, 16)])
def test_every_answer_is_recovered_from_the_windows_holding_it(tokenizer, tmp_path: Path, max_length: int,
                                                              stride: int) -> None:
    rows = capital_rows(60, seed=3, n_distractors=5)
    dm = datamodule(tokenizer, write_rows(rows, tmp_path / "qa.jsonl"), max_length=max_length, stride=stride,
                    val_size=30, test_size=1)
    dm.setup("fit")
    features, examples = dm.features["validation"], dm.examples["validation"]
    windows_of: dict[int, list[int]] = {}
    for i, example in enumerate(features["example_id"]):
        windows_of.setdefault(example, []).append(i)
    assert sorted(windows_of) == list(range(len(examples)))
    for example, windows in windows_of.items():
        answer = examples[example]["answers"]
        start_char = answer["answer_start"][0]
        end_char = start_char + len(answer["text"][0])
        holding = []
        for i in windows:
            f = features[i]
            assert len(f["input_ids"]) <= max_length
            offsets = f["offset_mapping"]
            inside = offsets[f["context_start"]][0] <= start_char and offsets[f["context_end"]][1] >= end_char
            if inside:
                assert recovered(features, i) == answer["text"][0]
                holding.append(i)
            else:
                assert f["start_positions"] == f["end_positions"] == f["cls_index"] == 0
        assert holding, f"no window holds the answer of example {example}"
    if max_length == 24:
        assert len(features) > 2 * len(examples)  # contexts of ~40 tokens: several windows each
    # consecutive windows of an example share `stride` context tokens
    first = [i for i in windows_of[0]]
    if len(first) > 1:
        a, b = features[first[0]], features[first[1]]
        shared = a["input_ids"][a["context_end"] - stride + 1 : a["context_end"] + 1]
        assert shared == b["input_ids"][b["context_start"] : b["context_start"] + stride]


def test_an_answer_crossing_the_window_boundary_is_labelled_in_the_next_window(tokenizer, tmp_path: Path) -> None:
    # question "what is the capital of norland ?" = 7 tokens; window 16 = CLS + 7 + SEP + 6 context + SEP
    context = "people in rome like music . the capital of norland is san jose ."
    start = context.index("san jose")
    row = {"question": "what is the capital of norland ?", "context": context,
           "answers": {"text": ["san jose"], "answer_start": [start]}}
    dm = datamodule(tokenizer, write_rows([row] * 3, tmp_path / "one.jsonl"), max_length=16, stride=3,
                    val_size=1, test_size=1)
    dm.setup("fit")
    f = dm.features["validation"]
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in f["input_ids"]]
    # windows: [people in rome like music .] [music . the capital of norland] [of norland is san jose .]
    crossing = next(i for i, t in enumerate(tokens) if t[-3:-1] == ["is", "san"])
    assert f[crossing]["start_positions"] == f[crossing]["end_positions"] == 0  # answer cut: CLS
    holding = [i for i, t in enumerate(tokens) if "jose" in t and "san" in t]
    assert holding and all(recovered(f, i) == "san jose" for i in holding)


def test_csv_answers_as_json_strings(tokenizer, tmp_path: Path) -> None:
    rows = capital_rows(20, seed=1)
    dm = datamodule(tokenizer, write_rows(rows, tmp_path / "qa.csv"), max_length=64, stride=16, val_size=5, test_size=5)
    dm.setup("fit")
    kept = {r["question"] + r["context"]: r["answers"] for r in rows}
    for example in dm.examples["train"]:
        assert example["answers"] == kept[example["question"] + example["context"]]


def test_missing_answers_column_names_the_key(tokenizer, tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "answers"} for r in capital_rows(10)]
    dm = datamodule(tokenizer, write_rows(rows, tmp_path / "qa.jsonl"), max_length=64, stride=16)
    with pytest.raises(DataError, match=r"column 'answers' \(task.data.answers_column\) not found in split 'train' .*"
                                        r"qa.jsonl; columns found: \['question', 'context', 'id'\]"):
        dm.setup("fit")


def test_answer_not_at_its_start_is_an_error_or_dropped(tokenizer, tmp_path: Path) -> None:
    rows = capital_rows(12)
    rows[4]["answers"]["answer_start"][0] += 2
    rows[7]["answers"]["text"][0] = "paris"
    path = write_rows(rows, tmp_path / "qa.jsonl")
    # rows 4 and 7 of the list: lines 5 and 8 of the jsonl file
    with pytest.raises(DataError, match=r"2 rows .* not in the context at its answer_start .*: lines 5, 8; e\.g\. line 5: "
                                        r".*bad_answers=drop"):
        datamodule(tokenizer, path, max_length=64, stride=16).setup("fit")
    dm = datamodule(tokenizer, path, max_length=64, stride=16, val_size=2, test_size=2, bad_answers="drop")
    dm.setup("fit")
    assert sum(len(d) for d in dm.examples.values()) == 10


def test_questions_without_answer_need_allow_no_answer(tokenizer, tmp_path: Path) -> None:
    rows = capital_rows(12, no_answer_every=5)  # rows 0, 5, 10
    path = write_rows(rows, tmp_path / "qa.jsonl")
    with pytest.raises(DataError, match=r"3 rows .* no answer in 'answers': lines 1, 6, 11; set task.data.allow_no_answer=true"):
        datamodule(tokenizer, path, max_length=64, stride=16).setup("fit")
    dm = datamodule(tokenizer, path, max_length=64, stride=16, allow_no_answer=True, val_size=6, test_size=1)
    dm.setup("fit")
    no_answer = [i for i, a in enumerate(dm.features["validation"]["answer_texts"]) if not a]
    assert no_answer and all(dm.features["validation"][i]["start_positions"] == 0 for i in no_answer)
    assert dm.module_kwargs() == {"with_no_answer": True}


def test_malformed_answers_and_bad_settings(tokenizer, tmp_path: Path) -> None:
    frame = pd.DataFrame(capital_rows(6))
    frame["answers"] = frame["answers"].map(json.dumps)
    frame.loc[2, "answers"] = "{not json"
    path = tmp_path / "qa.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"1 rows .* malformed answers in 'answers' \(task.data.answers_column\): "
                                        r"data row 3 \(file line 4\);"):
        datamodule(tokenizer, path, max_length=64, stride=16).setup("fit")
    with pytest.raises(ConfigError, match=r"task.data.stride \(64\) must be >= 0 and below task.data.max_length"):
        datamodule(tokenizer, path, max_length=64, stride=64)
    rng = random.Random(0)
    long_question = capital_example(rng) | {"question": " ".join(["what"] * 40)}
    dm = datamodule(tokenizer, write_rows([long_question] * 3, tmp_path / "q.jsonl"), max_length=24, stride=4,
                    val_size=1, test_size=1)
    with pytest.raises(ConfigError, match=r"task\.data\.max_length=24"):
        dm.setup("fit")


def test_unlabelled_data_for_prediction(tokenizer, tmp_path: Path) -> None:
    rows = [{"question": r["question"], "context": r["context"]} for r in capital_rows(5)]
    path = write_rows(rows, tmp_path / "new.jsonl")
    kwargs = QuestionAnsweringDataModule.prediction_kwargs({"answers_column": "answers"}, ["question", "context"], {})
    assert kwargs == {"answers_column": None}
    source = {"_target_": "tunelab.data.sources.load", "data_files": {"test": str(path)}}
    dm = QuestionAnsweringDataModule(tokenizer, source=source, splits={"test": "test"}, max_length=64, stride=16, **kwargs)
    dm.setup("predict")
    assert not dm.has_targets and "start_positions" not in dm.features["test"].column_names
    batch = next(iter(dm.predict_dataloader()))
    assert batch["meta"]["answer_texts"] == [[]] * 5 and sorted(batch["meta"]["example_id"]) == list(range(5))
    assert json.dumps(batch["meta"]["offset_mapping"])  # plain python lists


@pytest.mark.parametrize("option", ["nfkc", "whitespace", "strip_html", "strip_urls", "strip_mentions"])
def test_a_normaliser_that_would_move_answer_offsets_is_refused(tokenizer, tmp_path: Path, option: str) -> None:
    path = write_rows([capital_example(random.Random(0))], tmp_path / "qa.jsonl")
    with pytest.raises(ConfigError, match=rf"task\.data\.quality\.{option}: normalising the texts of extractive QA "
                                          r"would move the answers' character offsets"):
        datamodule(tokenizer, path, max_length=64, stride=16, quality={option: True})
    datamodule(tokenizer, path, max_length=64, stride=16, quality={option: False})  # off: accepted
