"""Shared fixtures: a tiny BERT and tokenizer built locally, learnable data, composed configs."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One xdist worker per core: a second torch thread per worker (and per subprocess it starts, which
    # inherits this variable) only oversubscribes the CPU; measured, it made tiny-model tests 2-9x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from tests.helpers import compose_train

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # in case torch was imported before this file

CLASSES = ["alpha", "beta", "gamma"]
CLASS_WORDS = {
    "alpha": ["apple", "orange", "banana", "cherry", "grape", "melon"],
    "beta": ["river", "ocean", "lake", "stream", "pond", "sea"],
    "gamma": ["engine", "wheel", "brake", "motor", "gear", "piston"],
}
NOISE = ["the", "a", "of", "and", "to", "in", "is", "was", "very", "some"]


def make_text(label: str, rng: random.Random) -> str:
    words = [rng.choice(CLASS_WORDS[label]) for _ in range(rng.randint(2, 4))]
    words += [rng.choice(NOISE) for _ in range(rng.randint(1, 10))]
    rng.shuffle(words)
    return " ".join(words)


def make_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of text whose label is given away by a few topic words among filler words."""
    rng = random.Random(seed)
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    return pd.DataFrame({"text": [make_text(label, rng) for label in labels], "label": labels})


def build_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NOISE, *(w for ws in CLASS_WORDS.values() for w in ws)]
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128, model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = build_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    torch.manual_seed(0)  # the same tiny model in every session
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def learnable_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "topics.csv"
    make_rows(600, seed=0).to_csv(path, index=False)
    return path


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``train.yaml`` with overrides, the run folder in ``tmp_path``."""

    def _compose(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_train(output_dir or tmp_path / "run", *overrides)

    return _compose


def tiny_overrides(tiny_bert: Path, data: Path, *extra: str) -> list[str]:
    """A fast, learnable run: the tiny BERT on the csv task, CPU, no progress bar."""
    return [
        "task=csv",
        f"task.data.source.data_files.train={data}",
        f"model.name_or_path={tiny_bert}",
        "model.name=tiny-test",
        "progress=none",
        "logger=csv",
        "optimizer.lr=3e-3",
        "scheduler=linear",
        "task.data.batch_size=16",
        "trainer.max_epochs=6",
        "trainer.log_every_n_steps=1",
        "callbacks.early_stopping=null",
        *extra,
    ]


@pytest.fixture(scope="session")
def finished_run(tiny_bert: Path, learnable_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One complete tiny run (6 epochs on the learnable csv), shared by the tests that read it."""
    from tunelab.train import run

    out = tmp_path_factory.mktemp("runs") / "run"
    metrics = run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv)))
    return out, metrics


@pytest.fixture(scope="session")
def tiny_pretrained(finished_run: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's backbone after fine-tuning on the learnable task, without its head: a stand-in
    for a pretrained checkpoint, whose features parameter-efficient methods can build on."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _ = finished_run
    path = tmp_path_factory.mktemp("tiny-pretrained")
    AutoModelForSequenceClassification.from_pretrained(run_dir / "model").base_model.save_pretrained(path)
    AutoTokenizer.from_pretrained(run_dir / "model").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """A tiny model gains nothing from a second thread, and loses a lot when the CPU is shared; a test module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

