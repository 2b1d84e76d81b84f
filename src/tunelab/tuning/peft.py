"""Parameter-efficient methods from the ``peft`` library: LoRA, IA3, prompt/prefix tuning, P-tuning.

The ``peft`` config class (``LoraConfig``, ...) is instantiated by Hydra from ``tuning.peft``.
Its ``task_type`` is derived from the task model (``*ForSequenceClassification`` -> SEQ_CLS, ...),
which makes ``peft`` train and save the task head with the adapter (``modules_to_save``), so a
reloaded classifier is the trained one, not a random one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.errors import ConfigError
from tunelab.models import load_model
from tunelab.tuning.base import TuningStrategy

TASK_TYPES = {
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
    "ForSeq2SeqLM": "SEQ_2_SEQ_LM",
    "ForCausalLM": "CAUSAL_LM",
    "LMHeadModel": "CAUSAL_LM",
    "EncoderDecoderModel": "SEQ_2_SEQ_LM",
}
# Target modules for architectures that peft's own tables leave out.
EXTRA_TARGETS = {
    "LoraConfig": {"distilbert": {"target_modules": ["q_lin", "v_lin"]}},
    "IA3Config": {"distilbert": {"target_modules": ["k_lin", "v_lin", "lin2"], "feedforward_modules": ["lin2"]}},
}
# Sizes that prompt learning reads from the model config (DistilBERT names them dim, n_layers, n_heads).
PROMPT_SIZES = {"token_dim": "hidden_size", "num_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads"}


def task_type_of(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if name.endswith(suffix)), None)


class Peft(TuningStrategy):
    """Wrap the task model with a ``peft`` method.

    Args:
        peft: a ``peft.PeftConfig`` (Hydra instantiates it from the yaml).
        merge_on_export: LoRA/IA3 only: also save the merged model in Hugging Face format in
            ``model/merged`` (loads without peft).
    """

    def __init__(self, peft: PeftConfig, merge_on_export: bool = False, name: str | None = None, **kwargs: Any):
        super().__init__(name=name or type(peft).__name__.removesuffix("Config").lower(), **kwargs)
        self.peft_config = peft
        self.merge_on_export = merge_on_export

    def _config_for(self, model: PreTrainedModel) -> PeftConfig:
        config = copy.deepcopy(self.peft_config)
        if config.task_type is None:
            config.task_type = task_type_of(model)
        model_type = getattr(model.config, "model_type", "")
        extra = EXTRA_TARGETS.get(type(config).__name__, {}).get(model_type, {})
        if getattr(config, "target_modules", False) is None and model_type not in LORA_TARGETS:
            for key, value in extra.items():
                setattr(config, key, value)
        if model_type == "encoder-decoder" and type(config).__name__ == "LoraConfig" and config.target_modules is None:
            # BERT2BERT: peft has no table for the wrapper; its encoder's names also match the decoder's
            # self- and cross-attention projections
            config.target_modules = LORA_TARGETS.get(model.config.encoder.model_type)
        if config.is_prompt_learning:
            for key, attr in PROMPT_SIZES.items():
                if getattr(config, key, None) is None and hasattr(model.config, attr):
                    setattr(config, key, getattr(model.config, attr))
        return config

    def apply(self, model: PreTrainedModel) -> nn.Module:
        config = self._config_for(model)
        try:
            wrapped = get_peft_model(model, config)
            if config.is_prompt_learning:  # incompatibilities show only in a forward pass: find them now
                with torch.no_grad():
                    wrapped.eval()(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
                wrapped.train()
        except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError, KeyError) as err:
            hint = ("use tuning=prompt or tuning=lora instead" if config.is_prompt_learning
                    else "set tuning.peft.target_modules to the names of the attention projections")
            raise ConfigError(
                f"tuning={self.name} ({type(config).__name__}) does not work with {type(model).__name__} "
                f"(model_type '{getattr(model.config, 'model_type', '?')}'): {err}; {hint}"
            ) from err
        return wrapped

    def save(self, model: nn.Module, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        if self.merge_on_export and not self.peft_config.is_prompt_learning:
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(path / "merged")
            tokenizer.save_pretrained(path / "merged")

    def load_pretrained(self, auto_class: type, model_cfg: Mapping[str, Any], path: Path, **config_kwargs: Any) -> nn.Module:
        base = load_model(auto_class, model_cfg, load_kwargs=self.load_kwargs(), **config_kwargs)
        return PeftModel.from_pretrained(base, path)
