"""Language-modelling fixtures: a tiny GPT-2 with a byte-level BPE tokenizer, and learnable text.

The tiny BERT for MLM is ``tiny_bert`` from conftest (its MLM head is new: tied to the embeddings).
Import the fixtures into a test module with ``from tests.lm_fixtures import tiny_gpt2  # noqa: F401``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tests.conftest import CLASS_WORDS, tiny_overrides

EOS = "<|endoftext|>"
CYCLES = list(CLASS_WORDS.values())


def lm_lines(n: int, seed: int = 0) -> list[str]:
    """Lines of 4-8 words walking one topic's word list in a fixed cyclic order from a random
    start: after the first word every word is predictable from its neighbours."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = rng.choice(CYCLES)
        start, length = rng.randrange(len(words)), rng.randint(4, 8)
        lines.append(" ".join(words[(start + i) % len(words)] for i in range(length)))
    return lines


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_gpt2_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the toy vocabulary; ``<|endoftext|>`` is bos/eos/unk, no pad (as GPT-2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*lm_lines(300, seed=99), "the a of and to in is was very some"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=128)
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 (hidden 32) with its tokenizer, saved like a Hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = build_gpt2_tokenizer(path)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def lm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 learnable lines in a .txt file."""
    return write_lines(tmp_path_factory.mktemp("lm-data") / "domain.txt", lm_lines(400))


def lm_overrides(model_path: Path, data: Path, task: str = "mlm", *extra: str) -> list[str]:
    """A fast, learnable LM run on a tiny model (the classification defaults of ``tiny_overrides``)."""
    base = [o for o in tiny_overrides(model_path, data) if not o.startswith(("task=", "task.data.batch_size"))]
    return [f"task={task}", *base, "task.data.block_size=32", "task.data.batch_size=16", *extra]
