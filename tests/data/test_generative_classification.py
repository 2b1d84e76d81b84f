"""Classification by generation, the data side: a row's target is its label's name (names, integer ids and
ClassLabel values read alike), its label index travels in meta, prompts do not depend on the gold label, and
label sets that cannot be told apart, unknown labels and missing label sets are refused by name."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from transformers import AutoTokenizer

from tests.conftest import CLASS_WORDS, make_text
from tests.decoder_fixtures import tiny_llama  # noqa: F401
from tests.seq2seq_fixtures import tiny_t5  # noqa: F401
from tunelab.batch import IGNORE_INDEX, META
from tunelab.data import GenerativeClassificationDataModule
from tunelab.data.generative_classification import GOLD
from tunelab.data.seq2seq import PROMPT_IDS, PROMPT_MASK, REFERENCE
from tunelab.data.sources import Source
from tunelab.errors import ConfigError, DataError

LABELS = [words[0] for words in CLASS_WORDS.values()]  # apple, river, engine: words of both tiny vocabularies
TEMPLATE = "Text: {source}\nLabel:"


def topic_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` texts of a few topic words among filler words; the label is the topic's first word."""
    rng = random.Random(seed)
    topics = [list(CLASS_WORDS)[i % len(CLASS_WORDS)] for i in range(n)]
    return pd.DataFrame({"text": [make_text(t, rng) for t in topics], "label": [CLASS_WORDS[t][0] for t in topics]})


def datamodule(model: Path, data: pd.DataFrame | datasets.Dataset, **kwargs: Any) -> GenerativeClassificationDataModule:
    """A set-up datamodule over ``data`` as the test split (the decoder reads ``TEMPLATE``)."""
    ds = data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_pandas(data, preserve_index=False)
    options = {"labels": LABELS, "architecture": "decoder", "prompt": {"template": TEMPLATE}, "eval_batch_size": 64,
               **kwargs}
    if options["architecture"] != "decoder":
        del options["prompt"]
    dm = GenerativeClassificationDataModule(tokenizer=AutoTokenizer.from_pretrained(model),
                                            source=Source(datasets.DatasetDict({"test": ds})), **options)
    dm.setup("test")
    return dm


def first_batch(dm: GenerativeClassificationDataModule) -> dict:
    return next(iter(dm.test_dataloader()))


def test_a_row_is_its_prompt_then_its_label_name_and_its_index_travels_in_meta(tiny_llama: Path) -> None:  # noqa: F811
    frame = topic_frame(12)
    dm = datamodule(tiny_llama, frame)
    tokenizer = dm.tokenizer
    batch = first_batch(dm)
    order = dm.eval_order("test")
    for i, row in enumerate(order):
        text, label = frame.text[row], frame.label[row]
        prompt = tokenizer(TEMPLATE.format(source=text))["input_ids"]
        completion = tokenizer(" " + label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(completion)
        assert batch["input_ids"][i, :n].tolist() == prompt + completion
        assert batch["labels"][i, :n].tolist() == [IGNORE_INDEX] * len(prompt) + completion
        assert batch[META][GOLD][i] == LABELS.index(label) and batch[META][REFERENCE][i] == label
    assert dm.candidates == [tokenizer(" " + label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                             for label in LABELS]


def test_label_names_integer_ids_and_class_labels_give_the_same_rows(tiny_llama: Path) -> None:  # noqa: F811
    frame = topic_frame(12)
    ids = frame.assign(label=[LABELS.index(label) for label in frame.label])
    as_class_label = datasets.Dataset.from_pandas(ids, preserve_index=False).cast_column(
        "label", datasets.ClassLabel(names=LABELS))
    renamed = datasets.Dataset.from_pandas(ids, preserve_index=False).cast_column(
        "label", datasets.ClassLabel(names=["fruit", "water", "machine"]))  # renamed by task.data.labels, by id
    golds = [first_batch(datamodule(tiny_llama, data))[META][GOLD] for data in (frame, ids, as_class_label, renamed)]
    assert golds[0] == golds[1] == golds[2] == golds[3] and set(golds[0]) == {0, 1, 2}


def test_prompts_leave_room_for_the_longest_label_whatever_the_row_says(tiny_llama: Path) -> None:  # noqa: F811
    """Cut prompts are the same for every gold label and for an unlabelled row: scores cannot see the answer."""
    long_text = " ".join(["the apple and the river"] * 12)
    frame = pd.DataFrame({"text": [long_text] * 3, "label": LABELS})
    labels = ["apple", "river", "engine engine engine"]  # completions of different lengths
    frame.loc[2, "label"] = labels[2]
    labelled = first_batch(datamodule(tiny_llama, frame, labels=labels, max_length=40))
    unlabelled = first_batch(datamodule(tiny_llama, frame[["text"]], labels=labels, max_length=40, label_column=None))
    prompts = {tuple(p[m.bool()].tolist()) for b in (labelled, unlabelled) for p, m in zip(b[META][PROMPT_IDS], b[META][PROMPT_MASK], strict=True)}
    assert len(prompts) == 1
    longest = max(len(c) for c in datamodule(tiny_llama, frame, labels=labels).candidates)
    assert len(prompts.pop()) + longest == 40  # the source was cut so that prompt + the longest label fit
    assert "labels" not in unlabelled and GOLD not in unlabelled.get(META, {})
    assert sorted(labelled[META][GOLD]) == [0, 1, 2]


def test_a_text_pair_fills_the_template_or_the_encoder_input(tiny_llama: Path, tiny_t5: Path) -> None:  # noqa: F811
    frame = pd.DataFrame({"premise": ["the apple", "a river"], "hypothesis": ["some engine", "the sea"], "label": LABELS[:2]})
    template = "{source} / {text_pair} ({hypothesis})"
    dm = datamodule(tiny_llama, frame, text_column="premise", text_pair_column="hypothesis", prompt={"template": template})
    batch = first_batch(dm)
    for p, m in zip(batch[META][PROMPT_IDS], batch[META][PROMPT_MASK], strict=True):
        assert dm.tokenizer.decode(p[m.bool()]) in {"the apple / some engine (some engine)", "a river / the sea (the sea)"}
    t5 = datamodule(tiny_t5, frame, text_column="premise", text_pair_column="hypothesis", architecture="encoder-decoder")
    sources = set(first_batch(t5)[META]["source_text"])
    assert sources == {"premise: the apple hypothesis: some engine", "premise: a river hypothesis: the sea"}


def test_an_encoder_decoder_reads_the_text_and_targets_the_label_name(tiny_t5: Path) -> None:  # noqa: F811
    frame = topic_frame(6)
    dm = datamodule(tiny_t5, frame, architecture="encoder-decoder", source_prefix="classify: ")
    batch = first_batch(dm)
    for i, row in enumerate(dm.eval_order("test")):
        expected = dm.tokenizer(text_target=frame.label[row])["input_ids"]
        assert [t for t in batch["labels"][i].tolist() if t != IGNORE_INDEX] == expected == dm.candidates[LABELS.index(frame.label[row])]
        assert batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist() == dm.tokenizer("classify: " + frame.text[row])["input_ids"]


def test_an_unknown_label_is_a_data_error_naming_its_row(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    frame = topic_frame(8)
    frame.loc[5, "label"] = "banana split"
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    source = {"_target_": "tunelab.data.sources.load", "path": "csv", "data_files": {"test": str(path)}}
    dm = GenerativeClassificationDataModule(tokenizer=AutoTokenizer.from_pretrained(tiny_llama), source=source,
                                            labels=LABELS, architecture="decoder")
    with pytest.raises(DataError, match=r"1 rows .* outside the declared set .*task\.data\.labels.*data row 6 \(file line 7\).*banana split"):
        dm.setup("test")
    ids = topic_frame(4).assign(label=[0, 1, 2, 7])
    with pytest.raises(DataError, match=r"row at index 3 with values \['7'\] \(integers are ids into task\.data\.labels, 0 to 2\)"):
        datamodule(tiny_llama, ids)


def test_labels_that_tokenize_identically_are_refused(tiny_t5: Path) -> None:  # noqa: F811
    """The tiny T5's word-level vocabulary reads both words as <unk>: the same completion."""
    with pytest.raises(ConfigError, match=r"task\.data\.labels: 'zebra' and 'walrus' tokenize to the same completion ids"):
        datamodule(tiny_t5, topic_frame(3), architecture="encoder-decoder", labels=["apple", "zebra", "walrus"])


def test_missing_blank_repeated_and_too_long_labels_are_refused(tiny_llama: Path) -> None:  # noqa: F811
    frame = topic_frame(3)
    with pytest.raises(ConfigError, match=r"task\.data\.labels: classification by generation needs the label names"):
        datamodule(tiny_llama, frame, labels=None)
    with pytest.raises(ConfigError, match=r"blank names"):
        datamodule(tiny_llama, frame, labels=["apple", " "])
    with pytest.raises(ConfigError, match=r"names \['apple'\] more than once"):
        datamodule(tiny_llama, frame, labels=["apple", "apple"])
    with pytest.raises(ConfigError, match=r"label 'apple river engine' .* tokens as a completion, more than task\.data\.max_target_length=3"):
        datamodule(tiny_llama, frame, labels=["apple", "apple river engine"], max_target_length=3)
