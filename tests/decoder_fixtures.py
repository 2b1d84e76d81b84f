"""Decoder-LLM fixtures: tiny random Llama and Qwen2 models with a byte-level BPE tokenizer that has a
ChatML chat template (as SmolLM2-Instruct and Qwen2.5-Instruct), and one without a pad token (as Llama 3).

Import into a test module with ``from tests.decoder_fixtures import tiny_decoder  # noqa: F401``; the
``tiny_decoder`` fixture is parametrised over both architectures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from tests.conftest import CLASS_WORDS, NOISE
from tests.lm_fixtures import lm_lines

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Words of prompt templates and tasks, so that the tiny tokenizer has whole-word tokens for them.
PROMPT_WORDS = ["Headline:", "Summary:", "Answer:", "Question:", "Context:", "Label:", "Translate", "Text:", "user", "assistant",
                "system"]
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def build_decoder_tokenizer(path: Path, chat: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the test vocabulary. eos ``<|im_end|>`` (the end of a turn, as in instruct models),
    pad ``<|endoftext|>`` (``pad=False``: none, as Llama 3), the ChatML template unless ``chat=False``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = [*NOISE, *PROMPT_WORDS, *(w for ws in CLASS_WORDS.values() for w in ws)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[END_OF_TEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*lm_lines(300, seed=99), " ".join(words), "\n".join(words)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, unk_token=END_OF_TEXT, pad_token=END_OF_TEXT if pad else None,
        model_max_length=256, additional_special_tokens=[IM_START],
    )
    if chat:
        fast.chat_template = CHATML
    fast.save_pretrained(path)
    return fast


def build_tiny_decoder(path: Path, architecture: str = "llama", chat: bool = True, pad: bool = True,
                       hidden_size: int = 32) -> Path:
    """A 2-layer decoder (hidden 32 by default, grouped-query attention) of ``architecture`` with its tokenizer,
    saved like a Hub checkpoint."""
    config_class, model_class = ARCHITECTURES[architecture]
    tokenizer = build_decoder_tokenizer(path, chat=chat, pad=pad)
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model_class(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=sorted(ARCHITECTURES))
def tiny_decoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and a tiny Qwen2 (one test per architecture), with a chat template and a pad token."""
    return build_tiny_decoder(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_no_pad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose tokenizer has no pad token and no chat template (as Llama 3 base)."""
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-llama-no-pad"), "llama", chat=False, pad=False)
