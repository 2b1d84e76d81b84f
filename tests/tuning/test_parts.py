"""Block, embedding and head detection across the common architectures (tiny random models)."""

from __future__ import annotations

import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    Gemma3TextConfig,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from tunelab.errors import ConfigError
from tunelab.tuning.parts import embedding_parameter_names, find_blocks, head_parameter_names

SMALL = {"vocab_size": 99, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}

MODELS = {
    "bert": (lambda: BertForSequenceClassification(BertConfig(num_hidden_layers=3, **SMALL)), 3, "bert.encoder.layer.0.",
             {"classifier.weight", "classifier.bias"}),
    "roberta": (lambda: RobertaForSequenceClassification(RobertaConfig(num_hidden_layers=3, **SMALL)), 3,
                "roberta.encoder.layer.0.", {"classifier.dense.weight", "classifier.dense.bias",
                                             "classifier.out_proj.weight", "classifier.out_proj.bias"}),
    "deberta-v2": (lambda: DebertaV2ForSequenceClassification(DebertaV2Config(num_hidden_layers=2, **SMALL)), 2,
                   "deberta.encoder.layer.0.", None),
    "distilbert": (lambda: DistilBertForSequenceClassification(DistilBertConfig(vocab_size=99, dim=16, n_layers=2, n_heads=2,
                                                                                 hidden_dim=32)), 2,
                   "distilbert.transformer.layer.0.", {"pre_classifier.weight", "pre_classifier.bias",
                                                       "classifier.weight", "classifier.bias"}),
    "gpt2": (lambda: GPT2ForSequenceClassification(GPT2Config(vocab_size=99, n_embd=16, n_layer=2, n_head=2)), 2,
             "transformer.h.0.", {"score.weight"}),
    "t5": (lambda: T5ForConditionalGeneration(T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                                       num_decoder_layers=3, num_heads=2)), 5, "encoder.block.0.", None),
    "bart": (lambda: BartForConditionalGeneration(BartConfig(vocab_size=99, d_model=16, encoder_layers=2, decoder_layers=2,
                                                             encoder_attention_heads=2, decoder_attention_heads=2,
                                                             encoder_ffn_dim=32, decoder_ffn_dim=32)), 4,
             "model.encoder.layers.0.", None),
}
DECODER = {"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 8}
for name, config in (("llama", LlamaConfig), ("qwen2", Qwen2Config), ("mistral", MistralConfig), ("gemma3", Gemma3TextConfig)):
    MODELS[name] = (lambda config=config: AutoModelForCausalLM.from_config(config(**DECODER)), 2, "model.layers.0.", None)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_blocks_embeddings_and_head_are_found(arch: str) -> None:
    build, n_blocks, first_block, head = MODELS[arch]
    model = build()
    blocks = find_blocks(model)
    assert len(blocks) == n_blocks
    assert blocks[0][0] + "." == first_block
    embeddings = embedding_parameter_names(model, blocks)
    assert embeddings and all("embed" in n or "wte" in n or "wpe" in n or "shared" in n or "LayerNorm" in n
                              or "layer_norm" in n for n in embeddings), sorted(embeddings)
    assert not any(n.startswith(first_block) for n in embeddings)
    if head is not None:
        assert head_parameter_names(model) == head


@pytest.mark.parametrize("config", [LlamaConfig, Qwen2Config, MistralConfig])
def test_an_untied_lm_head_is_pretrained_not_a_task_head(config: type) -> None:
    """Llama 3, Qwen2.5-7B and Mistral keep a separate lm_head: it comes from the checkpoint, so BitFit,
    adapters and freeze must not train it whole, and L2-SP pulls it towards its start; a classification
    head on the same backbone is new."""
    model = AutoModelForCausalLM.from_config(config(**DECODER, tie_word_embeddings=False))
    assert "lm_head.weight" in dict(model.named_parameters())  # untied: a parameter of its own
    assert head_parameter_names(model) == set()
    classifier = AutoModelForSequenceClassification.from_config(config(**DECODER, num_labels=3))
    assert head_parameter_names(classifier) == {"score.weight"}


def test_block_override_and_its_errors() -> None:
    model = MODELS["bert"][0]()
    assert len(find_blocks(model, "bert.encoder.layer")) == 3
    with pytest.raises(ConfigError, match=r"'bert.encoder.layers' is not a submodule"):
        find_blocks(model, "bert.encoder.layers")
    with pytest.raises(ConfigError, match="not a ModuleList"):
        find_blocks(model, "bert.encoder")
