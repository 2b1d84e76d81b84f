"""Token classification data: CoNLL files, sub-word alignment, windows over long sentences, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

from tests.ner_fixtures import TAGS, tagged_rows, write_conll, write_jsonl
from tunelab.batch import IGNORE_INDEX, META
from tunelab.data.sources import Source
from tunelab.data.sources.conll import conll
from tunelab.data.token_classification import TokenClassificationDataModule
from tunelab.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(tiny_bert)


def datamodule(tokenizer, train: Path | Source, **kwargs) -> TokenClassificationDataModule:
    source = train if isinstance(train, Source) else {"_target_": "tunelab.data.sources.load", "path": "json",
                                                      "data_files": {"train": str(train)}}
    return TokenClassificationDataModule(tokenizer, source=source, **kwargs)


def test_conll_reader_skips_docstart_and_names_sentence_lines(tmp_path: Path) -> None:
    rows = tagged_rows(3)
    source = conll(str(write_conll(rows, tmp_path / "train.conll", docstart=True)))
    ds = source.splits["train"]
    assert ds["tokens"] == [r["tokens"] for r in rows] and ds["tags"] == [r["tags"] for r in rows]
    second = 3 + len(rows[0]["tokens"]) + 1  # -DOCSTART-, blank, the first sentence and its blank line
    assert source.rows("train").describe([1]) == f"sentence at line {second}"


def test_conll_reader_takes_a_column_of_conll2003_layout_and_tokens_only_files(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    ds = conll(str(path)).splits["train"]
    assert ds["tokens"] == [["EU", "rejects"], ["Peter"]] and ds["tags"] == [["B-ORG", "O"], ["B-PER"]]
    assert conll(str(path), tag_column=1).splits["train"]["tags"][0] == ["NNP", "VBZ"]
    piped = tmp_path / "piped.conll"
    piped.write_text("New York|B-LOC\nis|O\n")
    assert conll(str(piped), delimiter="|").splits["train"]["tokens"] == [["New York", "is"]]
    words = tmp_path / "words.conll"
    words.write_text("EU\nrejects\n\nPeter\n")
    assert conll(str(words)).splits["train"].column_names == ["tokens"]


def test_a_conll_line_without_its_tag_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("EU\tB-ORG\nrejects\tO\n\nPeter\n")
    with pytest.raises(DataError, match=r"bad.conll: line 4 has 1 field\(s\) \('Peter'\).*tag_column=-1"):
        conll(str(path))


def test_first_subtoken_carries_the_tag_and_windows_score_every_word_once(tokenizer, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    rows = tagged_rows(60, seed=3)
    rows[0] = {"tokens": ["kiwi", "the", "lake", "sea", *["of"] * 20, "kiwi"],
               "tags": ["B-FRUIT", "O", "B-WATER", "I-WATER", *["O"] * 20, "B-FRUIT"]}
    with caplog.at_level(logging.WARNING):
        dm = datamodule(tokenizer, write_jsonl(rows, tmp_path / "t.jsonl"), max_length=10, stride=3,
                        splits={"test": "train"}, labels=TAGS)
        dm.setup("test")
    assert "sentences of split 'test' are longer than task.data.max_length=10 tokens" in caplog.text
    features = dm.features["test"]
    assert sum(1 for e in features["example_id"] if e == 0) > 3  # the long sentence: several windows
    for example, row in enumerate(rows):
        windows = [i for i, e in enumerate(features["example_id"]) if e == example]
        scored = [w for i in windows for w in features[i]["word_ids"]]
        assert sorted(scored) == list(range(len(row["tokens"])))  # every word once
        for i in windows:
            feature = features[i]
            ids, labels = feature["input_ids"], feature["labels"]
            for word, position in zip(feature["word_ids"], feature["positions"], strict=True):
                first = tokenizer.convert_ids_to_tokens(ids[position])
                assert not first.startswith("##") and row["tokens"][word].startswith(first)
                assert labels[position] == TAGS.index(row["tags"][word])
            assert sum(label != IGNORE_INDEX for label in labels) == len(feature["word_ids"])
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape and set(batch[META]) >= {"example_id", "positions"}
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_label_all_tokens_continues_a_word_tag_on_its_subtokens(tokenizer, tmp_path: Path) -> None:
    rows = [{"tokens": ["kiwi", "of"], "tags": ["B-FRUIT", "O"]}] * 4
    dm = datamodule(tokenizer, write_jsonl(rows, tmp_path / "t.jsonl"), splits={"test": "train"}, labels=TAGS,
                    label_all_tokens=True)
    dm.setup("test")
    labels = dm.features["test"][0]["labels"]  # [CLS] k ##i ##w ##i of [SEP]
    assert labels == [IGNORE_INDEX, 1, 2, 2, 2, 0, IGNORE_INDEX]


def test_class_label_tags_give_the_tag_set_and_the_scheme_is_inferred(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    names = ["O", "B-PER", "I-PER"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    ds = datasets.Dataset.from_dict({"tokens": [["the", "apple", "melon"]] * 30, "ner_tags": [[0, 1, 2]] * 30},
                                    features=features)
    with caplog.at_level(logging.INFO):
        dm = datamodule(tokenizer, Source(datasets.DatasetDict({"train": ds})), tags_column="ner_tags")
        dm.setup("fit")
    assert dm.labels == names and dm.module_kwargs() == {"labels": names, "tag_scheme": "IOB2"}
    assert dm.tag_scheme == "IOB2" and "tag scheme inferred from train: IOB2" in caplog.text


@pytest.mark.parametrize(("rows", "kwargs", "message"), [
    ([{"tokens": ["a", "b"], "tags": ["O"]}], {},
     r"1 rows .* different number of words \('tokens'\) and tags \('tags'\): line 2; e.g. line 2: 2 words, 1 tags"),
    ([{"tokens": ["a"], "tags": ["B-CITY"]}], {"labels": TAGS},
     r"tags outside the tag set .*\(task.data.labels\): line 2 with tags \['B-CITY'\]"),
    ([{"tokens": [], "tags": []}], {"empty_text": "error"}, r"1 rows with an empty sentence \(no words\) .*: line 2"),
    ([{"tokens": "a b", "tags": ["O", "O"]}], {}, r"column 'tokens' \(task.data.tokens_column\) .* must hold a list"),
    ([{"tokens": ["a"], "tags": ["PER"]}], {}, r"tags \['PER'\] .* are not O or B/I/E/S-<type>"),
])
def test_bad_rows_are_named_as_lines_of_the_file(tokenizer, tmp_path: Path, rows: list, kwargs: dict, message: str) -> None:
    data = [*tagged_rows(1), *rows, *tagged_rows(20, seed=1)]
    dm = datamodule(tokenizer, write_jsonl(data, tmp_path / "bad.jsonl"), **kwargs)
    with pytest.raises(DataError, match=message):
        dm.setup("fit")


def test_empty_sentences_are_dropped_by_default(tokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = [*tagged_rows(20), {"tokens": [], "tags": []}]
    dm = datamodule(tokenizer, write_jsonl(data, tmp_path / "e.jsonl"), splits={"test": "train"}, labels=TAGS)
    with caplog.at_level(logging.WARNING):
        dm.setup("test")
    assert len(dm.examples["test"]) == 20 and "dropped 1 rows with an empty sentence" in caplog.text and "line 21" in caplog.text


def test_a_slow_tokenizer_is_refused_with_the_fix() -> None:
    from tunelab.errors import ConfigError

    class SlowTokenizer:  # what a Python (non-Rust) tokenizer reports
        is_fast = False

    with pytest.raises(ConfigError, match=r"token classification needs a fast tokenizer \(word alignment\); "
                                          r"SlowTokenizer is not one: point model.tokenizer at a model with a tokenizer.json"):
        TokenClassificationDataModule(SlowTokenizer(), source={})
