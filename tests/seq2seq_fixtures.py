"""Seq2seq test fixtures: a tiny T5 (sentencepiece tokenizer trained here), a tiny BERT2BERT
(warm-started from a tiny BERT), and a learnable toy task: the target names the topics of the
source's words (a "headline" that a tiny model learns in a few epochs)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd
import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5ForConditionalGeneration

from tests.conftest import CLASS_WORDS, NOISE, build_tokenizer

TOPIC_WORDS = [w for words in CLASS_WORDS.values() for w in words]
PREFIX_WORDS = ["summarize:", "translate", "English", "to", "Romanian:"]


def make_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """``source``: 2-4 words of one or two topics among 2-5 filler words; ``target``: the name of each
    topic present (its first word) in a fixed topic order, e.g. "the apple and the river": a headline
    read off the content, long enough for 4-gram BLEU."""
    rng = random.Random(seed)
    topics = list(CLASS_WORDS)
    rows = []
    for _ in range(n):
        present = rng.sample(topics, rng.randint(1, 2))
        words = [rng.choice(CLASS_WORDS[t]) for t in present for _ in range(rng.randint(1, 2))]
        words += [rng.choice(NOISE) for _ in range(rng.randint(2, 5))]
        rng.shuffle(words)
        rows.append({"source": " ".join(words), "target": " and ".join(f"the {CLASS_WORDS[t][0]}" for t in topics if t in present)})
    return pd.DataFrame(rows)


def build_t5_tokenizer(path: Path) -> None:
    """A word-level sentencepiece model (pad 0, eos 1, unk 2, no bos, as T5's) saved like T5's."""
    model = io.BytesIO()
    corpus = " ".join([*TOPIC_WORDS, *NOISE, *PREFIX_WORDS])
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([corpus] * 10), model_writer=model, model_type="word", vocab_size=64,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )
    (path / "spiece.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer T5 (d_model 64) with its tokenizer, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-t5")
    build_t5_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BertModel (hidden 32) + WordPiece tokenizer: both sides of a tiny BERT2BERT."""
    path = tmp_path_factory.mktemp("tiny-bert-encoder")
    tokenizer = build_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pairs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.csv"
    make_pairs(400).to_csv(path, index=False)
    return path


def t5_overrides(tiny_t5: Path, data: Path, *extra: str) -> list[str]:
    """A fast run of the tiny T5 on local pairs (task=parallel), greedy decoding."""
    return [
        "task=parallel", f"task.data.source.data_files.train={data}", "model=t5-small",
        f"model.name_or_path={tiny_t5}", "model.name=tiny-t5", *SEQ2SEQ_FAST, *extra,
    ]


def bert2bert_overrides(encoder: Path, data: Path, *extra: str) -> list[str]:
    """The same with a tiny BERT2BERT built like model=minilm2minilm."""
    return [
        "task=parallel", f"task.data.source.data_files.train={data}", "model=minilm2minilm",
        f"model.name_or_path={encoder}", f"model.encoder_decoder.encoder={encoder}",
        f"model.encoder_decoder.decoder={encoder}", "model.name=tiny-bert2bert", *SEQ2SEQ_FAST, *extra,
    ]


SEQ2SEQ_FAST = [
    "progress=none", "logger=csv", "optimizer.lr=3e-3", "scheduler=linear", "task.data.batch_size=16",
    "task.data.max_length=32", "task.data.max_target_length=16", "task.module.generation.num_beams=1",
    "task.module.generation.max_new_tokens=8", "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0",
    "callbacks.early_stopping=null", "task.module.metrics=[rouge,sacrebleu,chrf]", "task.monitor=val/rougeL",
]
