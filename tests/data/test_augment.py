"""task.data.augment: EDA copies and back-translation of the training rows, never of validation or test,
deterministic per seed; synonyms from a word list or the model's own input embeddings; what was made recorded."""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest
import sentencepiece as spm
import torch
import transformers.utils
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from tests.conftest import CLASS_WORDS, NOISE, build_tokenizer, tiny_overrides
from tests.decoder_fixtures import build_tiny_decoder
from tests.helpers import compose_train
from tests.seq2seq_fixtures import build_t5_tokenizer
from tunelab.data import GenerativeClassificationDataModule
from tunelab.data.augment import (
    ENGLISH_STOPWORDS,
    Augmentation,
    AugmentConfig,
    Synonyms,
    SynonymTable,
    Translation,
    count,
    eda_operations,
    embedding_neighbours,
    input_embeddings,
    plan,
    read_word_list,
    seeded,
    whole_words,
)
from tunelab.data.checks import ROW, RowNumbering, number_rows
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.predict import predict
from tunelab.results.collect import flatten_metrics
from tunelab.train import build_datamodule, run

pytestmark = pytest.mark.usefixtures("one_thread")

TOPIC_WORDS = [w for words in CLASS_WORDS.values() for w in words]
#: Each class's six words as two sets of three synonyms: every topic word has two.
WORD_LIST = "".join(f"{', '.join(words[:3])}\n{', '.join(words[3:])}\n" for words in CLASS_WORDS.values())


def synonyms_of(word: str) -> set[str]:
    """The oracle: the other words of ``word``'s line in ``WORD_LIST``."""
    for line in WORD_LIST.splitlines():
        group = [w.strip() for w in line.split(",")]
        if word.lower() in group:
            return set(group) - {word.lower()}
    return set()


def distinct_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of 3-4 topic words of their class and 2-4 filler words, no word twice in a row."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(CLASS_WORDS)[i % 3]
        words = rng.sample(CLASS_WORDS[label], rng.randint(3, 4)) + rng.sample(NOISE, rng.randint(2, 4))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows).drop_duplicates("text")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("augment") / "topics.csv"
    distinct_rows(300, seed=5).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def word_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("words") / "synonyms.txt"
    path.write_text("# topic synonyms\n\n" + WORD_LIST)
    return path


def setup(tmp_path: Path, tiny_bert: Path, data: Path, *overrides: str):
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, data, *overrides))
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    return dm


def texts(dm, split: str) -> list[str]:
    return list(dm.examples[split]["text"])


# --- the splits -----------------------------------------------------------------------------------
def test_only_train_gains_copies_which_keep_their_labels(tmp_path: Path, tiny_bert: Path, data: Path,
                                                         word_list: Path) -> None:
    """k-shot draws k originals per class, then each gets its copies; validation and test stay byte-equal."""
    plain = setup(tmp_path / "plain", tiny_bert, data, "task.data.few_shot.k=8")
    aug = setup(tmp_path / "aug", tiny_bert, data, "task.data.few_shot.k=8", "task.data.augment.copies=3",
                f"task.data.augment.synonyms.source={word_list}")
    for split in ("validation", "test"):
        assert texts(aug, split) == texts(plain, split)
        assert aug.examples[split]["labels"] == plain.examples[split]["labels"]
    n = len(plain.examples["train"])
    counts = aug.data_report.metrics()["data/train"]
    assert counts["augmented/unchanged"] == counts["augmented/empty"] == 0  # every op changes these texts
    assert counts["originals"] == n == 24 and counts["augmented"] == 3 * n == len(aug.examples["train"]) - n
    assert sum(counts[f"augmented/{op}"] for op in ("synonym", "insert", "swap", "delete")) == 3 * n
    train = texts(aug, "train")
    assert train[:n] == texts(plain, "train")  # the originals stay, first
    copies, originals = train[n:], [t for t in train[:n] for _ in range(3)]  # each row's 3 copies, in row order
    assert all(c != o for c, o in zip(copies, originals, strict=True))
    assert aug.examples["train"]["labels"][n:] == [y for y in plain.examples["train"]["labels"] for _ in range(3)]
    assert len(aug.features["train"]) == 4 * n  # and they are trained on


def test_augmentation_is_deterministic_per_seed(tmp_path: Path, tiny_bert: Path, data: Path, word_list: Path) -> None:
    on = ("task.data.few_shot.k=8", "task.data.augment.copies=2", f"task.data.augment.synonyms.source={word_list}")
    first = texts(setup(tmp_path / "a", tiny_bert, data, *on, "seed=1"), "train")
    assert texts(setup(tmp_path / "b", tiny_bert, data, *on, "seed=1"), "train") == first
    other = texts(setup(tmp_path / "c", tiny_bert, data, *on, "seed=2"), "train")
    assert other[:24] == first[:24] and other[24:] != first[24:]  # the same k-shot originals, other copies
    fixed = [texts(setup(tmp_path / f"s{seed}", tiny_bert, data, *on, f"seed={seed}", "task.data.augment.seed=7"),
                   "train") for seed in (1, 2)]
    assert fixed[0] == fixed[1] != first  # augment.seed: the same copies for every training seed


def frame_rows(n: int, seed: int) -> datasets.Dataset:
    return number_rows(datasets.Dataset.from_pandas(distinct_rows(n, seed), preserve_index=False))


def augment(ds: datasets.Dataset, seed: int = 0, **cfg) -> tuple[datasets.Dataset, Augmentation]:
    augmentation = Augmentation(AugmentConfig.parse(cfg), seed)
    return augmentation.apply(ds, ["text"], None, RowNumbering()), augmentation


def copies_by_row(ds: datasets.Dataset, originals: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for row, text in zip(ds[ROW][originals:], ds["text"][originals:], strict=True):
        out.setdefault(row, []).append(text)
    return out


def test_a_rows_copies_do_not_depend_on_the_other_rows_nor_the_process(word_list: Path) -> None:
    ds = frame_rows(40, seed=2)
    cfg = {"copies": 3, "synonyms": {"source": str(word_list)}}
    full = copies_by_row(augment(ds, seed=3, **cfg)[0], len(ds))
    subset = ds.select(range(5, 40, 3))
    assert copies_by_row(augment(subset, seed=3, **cfg)[0], len(subset)) == {r: full[r] for r in subset[ROW]}
    random.seed(0)  # the global random states are the caller's: restored after augmenting
    before = random.random()
    random.seed(0)
    augment(ds, seed=3, **cfg)
    assert random.random() == before
    script = ("import json, sys, datasets\n"
              "from tunelab.data.augment import AugmentConfig, Augmentation\n"
              "from tunelab.data.checks import RowNumbering\n"
              "rows, cfg = json.loads(sys.stdin.read())\n"
              "ds = datasets.Dataset.from_dict(rows)\n"
              "out = Augmentation(AugmentConfig.parse(cfg), 3).apply(ds, ['text'], None, RowNumbering())\n"
              "print(json.dumps(out.to_dict()))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another process, another hash order of sets and str keys
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps([ds.to_dict(), cfg]), capture_output=True,
                          text=True, env=env, check=True)
    other = datasets.Dataset.from_dict(json.loads(done.stdout.splitlines()[-1]))
    assert copies_by_row(other, len(ds)) == full


# --- the operations -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ops(word_list: Path) -> dict:
    return eda_operations({"synonym": 0.3, "insert": 0.3, "swap": 0.3, "delete": 0.3},
                          SynonymTable(read_word_list(word_list), ENGLISH_STOPWORDS))


TEXT = "The apple and the river met an engine, near some banana stream; the melon was very red."


def test_each_eda_operation_does_what_it_says(ops: dict) -> None:
    words = TEXT.split()  # 17 words: each operation changes count(0.3, 17) = 6
    n = count(0.3, len(words))
    assert n == 6 and count(0.01, 3) == 1  # max(1, ceil(alpha * words))
    for trial in range(20):
        with seeded(trial):
            swapped, deleted = ops["swap"](TEXT).split(), ops["delete"](TEXT).split()
            replaced, inserted = ops["synonym"](TEXT).split(), ops["insert"](TEXT).split()
        # swap: the same words (nlpaug may move a capital to the new first word), in another order
        assert Counter(w.lower() for w in swapped) == Counter(w.lower() for w in words) and swapped != words
        # delete: n words fewer, the rest in order (nlpaug brings the second word back, capitalised, when it
        # deletes the first two)
        assert len(deleted) == len(words) - n or (len(deleted) == len(words) - n + 1 and deleted[0] == words[1].capitalize())
        assert _subsequence([w.lower() for w in deleted], [w.lower() for w in words])
        # synonym: only words with synonyms are replaced, by one of them (punctuation and case kept); stop words never
        changed = [(a, b) for a, b in zip(words, replaced, strict=True) if a != b]
        assert 1 <= len(changed) <= n
        for before, after in changed:
            core_before, core_after = before.strip(",;."), after.strip(",;.")
            assert core_after.lower() in synonyms_of(core_before) and before.replace(core_before, core_after) == after
        # insert: the text's words in order, plus n synonyms of words it holds
        assert len(inserted) == len(words) + n and _subsequence(words, inserted)
        extra = Counter(inserted) - Counter(words)
        present = {w.strip(",;.").lower() for w in words}
        assert sum(extra.values()) == n and all(any(w in synonyms_of(p) for p in present) for w in extra)


def _subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def test_copies_take_turns_over_the_operations_as_in_eda() -> None:
    ops = ["synonym", "insert", "swap", "delete"]
    for copies in (1, 3, 4, 9):
        for row in range(30):
            with seeded(row):
                chosen = plan(ops, copies)
            assert len(chosen) == copies and max(Counter(chosen).values()) <= copies // 4 + 1
    with seeded(0):
        assert sorted(plan(["swap"], 3)) == ["swap"] * 3


def test_stopwords_are_never_replaced_and_cases_follow_the_word(word_list: Path) -> None:
    table = SynonymTable({**read_word_list(word_list), "the": ["a"], "big": ["large"]}, ENGLISH_STOPWORDS)
    assert table.of("the") == [] and "the" not in table
    assert table.of("Apple") == ["Orange", "Banana"] and table.predict("APPLE,") == ["ORANGE,", "BANANA,"]
    assert SynonymTable({"the": ["a"]}, frozenset()).of("The") == ["A"]  # stopwords: null
    custom = AugmentConfig.parse({"synonyms": {"stopwords": ["Big"]}}).synonyms.stopword_set
    assert SynonymTable({"big": ["large"], "the": ["a"]}, custom).of("big") == [] and custom == {"big"}


def test_copies_that_change_nothing_or_blank_a_text_are_counted_not_added(translators: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    ds = frame_rows(12, seed=4)
    none = tmp_path / "none.txt"
    none.write_text("zebra, okapi\n")  # no word of the texts has a synonym
    out, made = augment(ds, copies=2, eda={"synonym": 0.5, "insert": 0, "swap": 0, "delete": 0},
                        synonyms={"source": str(none)})
    assert len(out) == len(ds) and made.counts["augmented/unchanged"] == 2 * len(ds) and made.counts["augmented"] == 0
    to, back = translators  # told to write eos at once: blank translations
    out, made = augment(ds, backtranslate=[str(to), str(back)],
                        translation={"num_beams": 1, "max_new_tokens": 1, "forced_eos_token_id": 1})
    assert len(out) == len(ds) and made.counts["augmented/empty"] == len(ds) and made.sample == []


# --- synonyms from the input embeddings -----------------------------------------------------------
def wordpiece(tmp_path: Path) -> PreTrainedTokenizerFast:
    return build_tokenizer(tmp_path)  # conftest's: NOISE and topic words, letters and ##letters


def byte_level_bpe() -> PreTrainedTokenizerFast:
    rng = random.Random(0)
    corpus = [" ".join(rng.choice([*TOPIC_WORDS, *NOISE]) for _ in range(8)) + " applesauce rivers" for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def sentencepiece(tmp_path: Path):
    rng = random.Random(1)
    corpus = [" ".join(rng.choice([*TOPIC_WORDS, *NOISE]) for _ in range(8)) + " applesauce rivers" for _ in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, model_type="unigram",
                                   vocab_size=80, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["wordpiece", "bpe", "sentencepiece"])
def test_whole_words_per_tokenizer_family(family: str, tmp_path: Path) -> None:
    """Oracle: the family's own marking, read off the raw vocabulary: WordPiece words are the entries without the
    '##' of continuations; byte-level BPE and SentencePiece words start with their word-start mark, 'Ġ' or '▁'."""
    tok = {"wordpiece": lambda: wordpiece(tmp_path), "bpe": byte_level_bpe, "sentencepiece": lambda: sentencepiece(tmp_path)}[family]()
    vocab, special = tok.get_vocab(), set(tok.all_special_tokens)
    if family == "wordpiece":
        expected = {t for t in vocab if not t.startswith("##") and t.isalpha() and len(t) >= 2 and t not in special}
        inside = {t for t in vocab if t.startswith("##")}
    else:
        mark = "Ġ" if family == "bpe" else "▁"
        expected = {t[1:] for t in vocab if t.startswith(mark) and t[1:].isalpha() and len(t) >= 3}
        inside = {t for t in vocab if not t.startswith(mark) and t.isalpha() and len(t) >= 2}
    found = whole_words(tok)
    assert set(found) == expected and {"apple", "river"} <= expected and inside  # pieces inside words exist ...
    assert all(tok.convert_ids_to_tokens(i) not in inside | special for i in found.values())  # ... and are left out
    for word, i in found.items():  # the id is the word's token in running text
        assert tok(f"the {word}", add_special_tokens=False)["input_ids"][-1] == i


PLANTED = {"apple": "cherry", "river": "ocean", "engine": "motor"}  # each pair's embeddings almost the same


def planted_embeddings(tok, hidden: int = 64) -> torch.Tensor:
    """Random embeddings (nearly orthogonal), with each planted pair almost equal; the stop word 'the', '[SEP]' and
    '##a' put next to 'apple' too, and 'grape' half-way to it."""
    vocab = tok.get_vocab()
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(len(vocab), hidden, generator=gen)
    noise = lambda: 0.05 * torch.randn(hidden, generator=gen)  # noqa: E731
    for a, b in PLANTED.items():
        emb[vocab[b]] = emb[vocab[a]] + noise()
    for near in ("the", "[SEP]", "##a"):
        emb[vocab[near]] = emb[vocab["apple"]] + noise()
    emb[vocab["grape"]] = emb[vocab["apple"]] + emb[vocab["grape"]]  # cosine about 0.7
    return emb


def test_embedding_neighbours_are_the_nearest_whole_words(tmp_path: Path) -> None:
    tok = wordpiece(tmp_path)
    emb = planted_embeddings(tok)
    words = {"Apple", "river", "engine", "pond", "the", "zebra"}
    near = embedding_neighbours(words, tok, emb, neighbours=3, min_similarity=0.9, stopwords=ENGLISH_STOPWORDS)
    assert near == {"apple": ["cherry"], "river": ["ocean"], "engine": ["motor"]}  # no [SEP], ##a, nor 'the'
    wider = embedding_neighbours({"apple"}, tok, emb, neighbours=3, min_similarity=0.5, stopwords=ENGLISH_STOPWORDS)
    assert wider == {"apple": ["cherry", "grape"]}  # nearest first, down to min_similarity
    assert embedding_neighbours({"apple"}, tok, emb, 1, 0.5, ENGLISH_STOPWORDS) == {"apple": ["cherry"]}  # neighbours=1
    assert embedding_neighbours({"apple"}, tok, emb, neighbours=3, min_similarity=0.5, chunk=1, stopwords=ENGLISH_STOPWORDS) == wider
    with_stopwords = embedding_neighbours({"apple", "the"}, tok, emb, neighbours=3, min_similarity=0.5)  # stopwords: null
    assert sorted(with_stopwords["apple"][:2]) == ["cherry", "the"] and with_stopwords["apple"][2] == "grape"
    assert "apple" in with_stopwords["the"]


@pytest.fixture(scope="module")
def planted_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BertModel whose input embeddings are ``planted_embeddings``."""
    path = tmp_path_factory.mktemp("planted-bert")
    tok = build_tokenizer(path)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(planted_embeddings(tok))
    model.save_pretrained(path)
    return path


def test_embedding_synonyms_come_from_the_run_backbone(tmp_path: Path, planted_bert: Path, data: Path) -> None:
    """synonyms.model defaults to the run's model.name_or_path: its planted pairs are what replaces words."""
    dm = setup(tmp_path, planted_bert, data, "task.data.few_shot.k=4", "task.data.augment.copies=1",
               "task.data.augment.eda={synonym:1.0,insert:0,swap:0,delete:0}", "task.data.augment.synonyms.min_similarity=0.9")
    swap = {**PLANTED, **{b: a for a, b in PLANTED.items()}}
    originals = texts(dm, "train")[:12]
    expected = [" ".join(swap.get(w, w) for w in t.split()) for t in originals]
    kept = [e for e, t in zip(expected, originals, strict=True) if e != t]
    assert texts(dm, "train")[12:] == kept and kept  # every planted word replaced by its partner, nothing else
    assert dm.data_report.metrics()["data/train"]["augmented/unchanged"] == 12 - len(kept)
    # built in Python, synonyms.model unset: the tokenizer's own checkpoint
    made = Augmentation(AugmentConfig.parse({"copies": 1, "eda": {"synonym": 1.0, "insert": 0, "swap": 0, "delete": 0},
                                             "synonyms": {"min_similarity": 0.9}}), seed=0)
    rows = number_rows(datasets.Dataset.from_dict({"text": originals}))
    out = made.apply(rows, ["text"], AutoTokenizer.from_pretrained(planted_bert), RowNumbering())
    assert out["text"][12:] == kept


def test_an_embedding_model_of_another_vocabulary_is_refused(tmp_path: Path, tiny_bert: Path, data: Path) -> None:
    small = tmp_path / "small"
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(small)
    with pytest.raises(ConfigError, match=r"synonyms.model=.*has 20 input embeddings, fewer than the \d+ tokens"):
        setup(tmp_path, tiny_bert, data, "task.data.few_shot.k=2", "task.data.augment.copies=1",
              f"task.data.augment.synonyms.model={small}")


def cased_bert(path: Path) -> tuple[PreTrainedTokenizerFast, Path]:
    """A cased WordPiece vocabulary holding 'Apple' and 'apple' (not 'APPLE'), and a BertModel whose input
    embeddings put 'Cherry' next to 'Apple' and 'melon' next to 'apple', every other word far from them."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NOISE, "Apple", "apple", "Cherry", "melon", "engine", "river"]
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    ids = fast.get_vocab()
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(len(ids), 64, generator=gen)
    emb[ids["Cherry"]] = emb[ids["Apple"]] + 0.05 * torch.randn(64, generator=gen)
    emb[ids["melon"]] = emb[ids["apple"]] + 0.05 * torch.randn(64, generator=gen)
    model = BertModel(BertConfig(vocab_size=len(ids), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(emb)
    model.save_pretrained(path)
    return fast, path


def test_a_rows_embedding_synonyms_do_not_depend_on_the_other_rows(tmp_path: Path) -> None:
    """With a cased vocabulary, 'APPLE' (no entry of its own) takes the neighbours of 'apple' whether or not another
    row holds 'Apple', whose neighbours differ."""
    tok, path = cased_bert(tmp_path)
    assert {"Apple", "apple"} <= set(whole_words(tok)) and "APPLE" not in whole_words(tok)
    ds = number_rows(datasets.Dataset.from_dict({"text": ["APPLE engine river", "Apple engine river",
                                                          "apple river engine", "the river engine"]}))
    cfg = {"copies": 1, "eda": {"synonym": 1.0, "insert": 0, "swap": 0, "delete": 0},
           "synonyms": {"model": str(path), "min_similarity": 0.9}}

    def copies(rows: datasets.Dataset) -> dict[int, list[str]]:
        return copies_by_row(Augmentation(AugmentConfig.parse(cfg), 0).apply(rows, ["text"], tok, RowNumbering()),
                             len(rows))

    full = copies(ds)
    assert full == {0: ["MELON engine river"], 1: ["Cherry engine river"], 2: ["melon river engine"]}
    for subset in ([0], [0, 3], [0, 2]):  # without the 'Apple' row (and without any other word's row)
        assert copies(ds.select(subset)) == {r: full[r] for r in subset if r in full}


def _bert_classifier(path: Path, **save) -> Path:
    tok = build_tokenizer(path)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(path, **save)
    return path


CHECKPOINTS = {  # a *For<Task> checkpoint, which stores the base model under its prefix (bert., model.)
    "bert-classifier": lambda path: _bert_classifier(path),
    "llama-causal-lm": lambda path: build_tiny_decoder(path, "llama"),
    "qwen2-causal-lm": lambda path: build_tiny_decoder(path, "qwen2"),
    "bert-sharded": lambda path: _bert_classifier(path, max_shard_size="20KB"),
}


@pytest.mark.parametrize("checkpoint", sorted(CHECKPOINTS))
def test_input_embeddings_are_read_alone_from_the_safetensors(checkpoint: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Oracle: the input embeddings of the model that transformers loads; the model itself is never loaded."""
    path = CHECKPOINTS[checkpoint](tmp_path)
    if checkpoint == "bert-sharded":
        assert (path / "model.safetensors.index.json").is_file() and not (path / "model.safetensors").exists()
        assert len(set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    expected = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach().float()

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(AutoModel, "from_pretrained", refuse)
    state = torch.random.get_rng_state()
    found = input_embeddings(str(path))
    assert found.dtype == torch.float32 and torch.equal(found, expected)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's random state as it was


def test_input_embeddings_of_a_checkpoint_without_safetensors_load_the_model(tmp_path: Path) -> None:
    path = _bert_classifier(tmp_path)
    model = BertForSequenceClassification.from_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    assert torch.equal(input_embeddings(str(path)), model.get_input_embeddings().weight.detach().float())


def test_the_synonym_model_is_read_at_its_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """synonyms.revision (the run's model.revision by default) reaches every file lookup."""
    cfg = compose_train(tmp_path, "model.revision=v1.2")
    assert AugmentConfig.parse(cfg.task.data.augment).synonyms.revision == "v1.2"
    asked = []
    real = transformers.utils.cached_file

    def spy(path, filename, **kwargs):
        asked.append((filename, kwargs.get("revision")))
        return real(path, filename, **kwargs)

    monkeypatch.setattr(transformers.utils, "cached_file", spy)
    path = _bert_classifier(tmp_path / "bert")
    input_embeddings(str(path), revision="v1.2")
    assert ("model.safetensors", "v1.2") in asked and {r for _, r in asked} == {"v1.2"}
    made = Augmentation(AugmentConfig.parse({"copies": 1, "eda": {"synonym": 1.0, "insert": 0, "swap": 0, "delete": 0},
                                             "synonyms": {"model": str(path), "revision": "v1.2"}}), seed=0)
    asked.clear()
    made.apply(frame_rows(3, seed=0), ["text"], AutoTokenizer.from_pretrained(path), RowNumbering())
    assert ("model.safetensors", "v1.2") in asked


# --- back-translation -----------------------------------------------------------------------------
def tiny_t5(path: Path, seed: int) -> Path:
    """A 2-layer T5 whose (random) outputs depend on its input: initializer_factor 5 keeps it off eos."""
    build_t5_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    config = T5Config(vocab_size=len(tok), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2, initializer_factor=5.0,
                      decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def translators(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_t5(tmp_path_factory.mktemp("t5-to"), 0), tiny_t5(tmp_path_factory.mktemp("t5-back"), 1)


GENERATION = {"num_beams": 1, "max_new_tokens": 5}


def plain_generate(path: Path, text: str, prefix: str = "") -> str:
    tok, model = AutoTokenizer.from_pretrained(path), T5ForConditionalGeneration.from_pretrained(path)
    ids = model.generate(**tok(prefix + text, return_tensors="pt"), **GENERATION)
    return tok.decode(ids[0], skip_special_tokens=True)


def test_back_translation_is_what_plain_generate_gives(translators: tuple[Path, Path], tmp_path: Path) -> None:
    to, back = translators
    rows = ["the apple and the river.", "some engine is very big! a wheel", "the ocean of grape and melon is lake"]
    ds = number_rows(datasets.Dataset.from_dict({"text": rows, "label": [0, 1, 2]}))
    # a tunelab run folder: its model/ export, and the source_prefix its config.yaml trained with
    run_dir = tmp_path / "runs" / "translation"
    shutil.copytree(to, run_dir / "model")
    (run_dir / "config.yaml").write_text("task:\n  data:\n    source_prefix: 'translate English to Romanian: '\n")
    expected = [" ".join(plain_generate(back, plain_generate(to, s, "translate English to Romanian: "))
                         for s in re.split(r"(?<=[.!?])\s+", row)) for row in rows]
    assert len(set(expected)) == 3 and all(expected)  # the oracle tells the rows apart
    for batch_size in (1, 8):
        out, made = augment(ds, backtranslate=[str(run_dir), str(back)],
                            translation={"batch_size": batch_size, **GENERATION})
        assert out["text"] == rows + expected and out["label"] == [0, 1, 2, 0, 1, 2]
        assert made.counts["augmented/backtranslate"] == 3 and made.counts["augmented"] == 3
    out, _ = augment(ds, backtranslate=[str(to), str(back)], translation={"prefixes": ["summarize: ", None], **GENERATION})
    assert out["text"][3] == plain_generate(back, plain_generate(to, "the apple and the river.", "summarize: "))


def test_loading_forks_no_gpus_random_state(tmp_path: Path, translators: tuple[Path, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine that shows 2 GPUs, reading the embeddings and loading the translation models on the CPU save no
    GPU's random state (torch's fork_rng without devices= initialises every visible GPU, in every rank)."""
    touched = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": touched.append(device) or torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": touched.append(device))
    input_embeddings(str(_bert_classifier(tmp_path)))
    augment(frame_rows(2, seed=0), backtranslate=[str(p) for p in translators], translation=GENERATION)
    assert touched == []


def test_back_translation_needs_encoder_decoders(tiny_bert: Path, translators: tuple[Path, Path]) -> None:
    ds = frame_rows(3, seed=0)
    with pytest.raises(ConfigError, match=r"backtranslate\[0\]=.* is a bert model, not an encoder-decoder"):
        augment(ds, backtranslate=[str(tiny_bert), str(translators[1])])


# --- families, config, records ----------------------------------------------------------------------
@pytest.mark.parametrize("task,switch", [
    ("qa-json", "task.data.augment.copies=2"), ("ner-json", "task.data.augment.copies=2"), ("mlm", "task.data.augment.copies=2"),
    ("parallel", "task.data.augment.copies=2"), ("mc-json", "task.data.augment.backtranslate=[a,b]"),
])
def test_families_whose_targets_hang_on_the_words_refuse_it(task: str, switch: str, tiny_bert: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"task={task}", f"model.name_or_path={tiny_bert}", switch)
    with pytest.raises(ConfigError, match=rf"^{re.escape(switch.replace('=[a,b]', '=[a, b]'))}: \w+DataModule does "
                                          r"not augment its training rows: .*Set task.data.augment.copies=0"):
        build_datamodule(cfg, load_tokenizer(cfg.model))


def test_classification_by_generation_augments_its_text(translators: tuple[Path, Path], tmp_path: Path,
                                                        word_list: Path) -> None:
    path = tmp_path / "train.csv"
    names = {"alpha": "apple", "beta": "river", "gamma": "engine"}  # label names the T5 vocabulary holds
    distinct_rows(60, seed=3).assign(label=lambda f: f["label"].map(names)).to_csv(path, index=False)
    tok = AutoTokenizer.from_pretrained(translators[0])
    dm = GenerativeClassificationDataModule(
        tok, source={"_target_": "tunelab.data.sources.load", "path": "csv", "data_files": {"train": str(path)}},
        labels=list(names.values()), architecture="encoder-decoder",
        augment={"copies": 2, "synonyms": {"source": str(word_list)}})
    dm.setup("fit")
    n = dm.augmentation.counts["originals"]
    train = dm.examples["train"]
    assert len(train) == 3 * n and train["label"][n:] == [y for y in train["label"][:n] for _ in range(2)]
    assert all(c != o for c, o in zip(train["text"][n:], [t for t in train["text"][:n] for _ in range(2)], strict=True))


@pytest.mark.parametrize("cfg,message", [
    ({"copies": -1}, r"task.data.augment.copies must be a whole number of at least 0"),
    ({"copies": 2, "eda": {"swap": 1.5}}, r"task.data.augment.eda.swap must be a number in \[0, 1\]"),
    ({"eda": {"shuffle": 0.1}}, r"task.data.augment.eda.shuffle is not a setting; .* takes synonym, insert, swap, delete"),
    ({"copies": 2, "eda": dict.fromkeys(("synonym", "insert", "swap", "delete"), 0)}, "every task.data.augment.eda rate is 0"),
    ({"synonyms": {"neighbours": 0}}, r"synonyms.neighbours must be a whole number of at least 1"),
    ({"synonyms": {"min_similarity": 2}}, r"synonyms.min_similarity must be a cosine similarity in \[-1, 1\]"),
    ({"synonyms": {"stopwords": "french"}}, r"synonyms.stopwords must be english, null or a list of words"),
    ({"backtranslate": ["only-one"]}, r"task.data.augment.backtranslate must be null or \[<to>, <back>\]"),
    ({"translation": {"prefixes": "x"}}, r"translation.prefixes must be \[<to prefix>, <back prefix>\]"),
    ({"translation": {"batch_size": 0}}, r"translation.batch_size must be a whole number of at least 1"),
    ({"seed": "one"}, r"task.data.augment.seed must be null \(the run's seed\) or a whole number"),
    ({"copy": 2}, r"task.data.augment.copy is not a setting"),
])
def test_bad_settings_are_refused_naming_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AugmentConfig.parse(cfg)


def test_a_missing_word_list_is_refused_when_the_copies_are_made() -> None:
    """Parsing needs no file (a finished run copied elsewhere still loads its config); augmenting does."""
    cfg = {"copies": 2, "synonyms": {"source": "/no/such/words.txt"}}
    assert AugmentConfig.parse(cfg).synonyms.source == "/no/such/words.txt"
    with pytest.raises(ConfigError, match=r"synonyms.source=/no/such/words.txt: no such file"):
        augment(frame_rows(3, seed=0), **cfg)


def test_an_evaluation_only_run_makes_no_copies(tmp_path: Path, tiny_bert: Path, data: Path, word_list: Path) -> None:
    on = ("task.data.few_shot.k=4", "task.data.augment.copies=2", f"task.data.augment.synonyms.source={word_list}")
    trained = setup(tmp_path / "train", tiny_bert, data, *on)
    assert trained.augmentation.config.active and len(trained.examples["train"]) == 12 + 24  # the control
    evaluated = setup(tmp_path / "eval", tiny_bert, data, *on, "train=false")
    assert not evaluated.augmentation.config.active and len(evaluated.examples["train"]) == 12
    assert "augmented" not in evaluated.data_report.metrics()["data/train"]


def test_the_shipped_yaml_is_the_default_config(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    parsed = AugmentConfig.parse(cfg.task.data.augment)
    assert parsed.synonyms.model == cfg.model.name_or_path and not parsed.active
    assert parsed == AugmentConfig(synonyms=Synonyms(model=cfg.model.name_or_path, revision=cfg.model.revision))
    assert parsed.translation == Translation() and parsed.sample == 20


def test_the_augment_config_and_word_list_are_in_the_run_id(tmp_path: Path, word_list: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text(WORD_LIST)
    base = compose_train(tmp_path, "seed=1").run_id
    on = compose_train(tmp_path, "seed=1", "task.data.augment.copies=4", f"task.data.augment.synonyms.source={words}")
    assert base != on.run_id
    assert on.run_id != compose_train(tmp_path, "seed=1", "task.data.augment.copies=4", "task.data.augment.eda.swap=0.2",
                                      f"task.data.augment.synonyms.source={words}").run_id
    first = on.run_id
    words.write_text(WORD_LIST + "gear, cog\n")  # same path, other synonyms: another run
    assert compose_train(tmp_path, "seed=1", "task.data.augment.copies=4", f"task.data.augment.synonyms.source={words}").run_id != first


def test_a_run_records_its_copies(tmp_path: Path, tiny_bert: Path, data: Path, word_list: Path) -> None:
    out = tmp_path / "run"
    words = shutil.copy(word_list, tmp_path / "words.txt")  # deleted below
    metrics = run(compose_train(out, *tiny_overrides(tiny_bert, data, "task.data.few_shot.k=4", "trainer.max_epochs=1",
                                                     "task.data.augment.copies=2", "task.data.augment.sample=5",
                                                     f"task.data.augment.synonyms.source={words}")))
    saved = json.loads((out / "metrics.json").read_text())
    flat = flatten_metrics(saved)
    assert flat["data/train/originals"] == 12 and flat["data/train/augmented"] == 24 == saved["data"]["train"] - 12
    assert sum(flat[f"data/train/augmented/{op}"] for op in ("synonym", "insert", "swap", "delete")) == 24
    assert metrics["data"]["validation"] == 12  # k-shot validation, not augmented
    rows = [json.loads(line) for line in (out / "augment_sample.jsonl").read_text().splitlines()]
    originals = set(pd.read_csv(data)["text"])
    assert len(rows) == 5 and all(set(r) == {"row", "copy", "op", "original", "augmented"} for r in rows)
    for r in rows:
        assert r["original"]["text"] in originals and r["augmented"]["text"] != r["original"]["text"]
        assert r["op"] in {"synonym", "insert", "swap", "delete"} and r["copy"] in (0, 1)
        line = int(re.fullmatch(r"data row (\d+) \(file line \d+\)", r["row"]).group(1))
        assert pd.read_csv(data)["text"][line - 1] == r["original"]["text"]  # the row as the user's file numbers it
    # tunelab-predict on the run once its word list is gone (the run copied to another machine): nothing to augment
    Path(words).unlink()
    new = tmp_path / "new.csv"
    pd.read_csv(data).head(7).to_csv(new, index=False)
    predicted = predict(out, new)
    assert predicted["rows"] == 7 and len(pd.read_csv(predicted["predictions"])) == 7
