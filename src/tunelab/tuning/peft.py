"""Parameter-efficient methods from the ``peft`` library: LoRA and its variants (DoRA, rsLoRA, PiSSA, OLoRA),
VeRA, LoHa, LoKr, OFT, BOFT, HRA, IA3, LayerNorm tuning, prompt/prefix tuning, P-tuning (AdaLoRA: ``adalora.py``).

The ``peft`` config class (``LoraConfig``, ...) is instantiated by Hydra from ``tuning.peft``.
Its ``task_type`` is derived from the task model (``*ForSequenceClassification`` -> SEQ_CLS, ...),
which makes ``peft`` train and save the task head with the adapter (``modules_to_save``), so a
reloaded classifier is the trained one, not a random one.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_TARGETS
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors.torch import load_file, save_file
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
# LoRA initialisations that rewrite the base weights (W -> W - B0 A0): the export converts them to plain LoRA.
MUTATING_INITS = ("pissa", "olora")
# Sizes that prompt learning reads from the model config (DistilBERT names them dim, n_layers, n_heads).
PROMPT_SIZES = {"token_dim": "hidden_size", "num_layers": "num_hidden_layers", "num_attention_heads": "num_attention_heads"}


def task_type_of(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if name.endswith(suffix)), None)


def norm_module_names(model: nn.Module) -> list[str]:
    """The (last) names of the model's normalisation layers (``LayerNorm``, ``input_layernorm``, ...)."""
    return sorted({name.rpartition(".")[2] for name, module in model.named_modules()
                   if name and type(module).__name__.endswith(("LayerNorm", "RMSNorm"))})


def mutating_init(config: PeftConfig) -> bool:
    """Whether the LoRA initialisation moves part of the base weights into the adapter (PiSSA, OLoRA)."""
    return str(getattr(config, "init_lora_weights", "")).lower().startswith(MUTATING_INITS)


class Peft(TuningStrategy):
    """Wrap the task model with a ``peft`` method.

    Args:
        peft: a ``peft.PeftConfig`` (Hydra instantiates it from the yaml).
        merge_on_export: methods that add to or rescale weights (not prompt learning): also save the
            merged model in Hugging Face format in ``model/merged`` (loads without peft).

    Target modules left ``null`` are peft's per-architecture defaults; where peft's table for the method
    lacks the model type they are LoRA's (LayerNorm tuning: the model's normalisation layers). PiSSA and
    OLoRA rewrite the base weights they start from, so their export is converted to a plain LoRA adapter of
    twice the rank for the untouched base (peft's ``path_initial_model_for_weight_conversion``).
    """

    def __init__(self, peft: PeftConfig, merge_on_export: bool = False, name: str | None = None, **kwargs: Any):
        super().__init__(name=name or type(peft).__name__.removesuffix("Config").lower(), **kwargs)
        self.peft_config = peft
        self.merge_on_export = merge_on_export
        self._initial_adapter: dict[str, torch.Tensor] | None = None  # PiSSA/OLoRA: the adapter before training

    def _config_for(self, model: PreTrainedModel) -> PeftConfig:
        config = copy.deepcopy(self.peft_config)
        if config.task_type is None:
            config.task_type = task_type_of(model)
        model_type = getattr(model.config, "model_type", "")
        if getattr(config, "target_modules", False) is None:
            self._fill_targets(config, model, model_type)
        if model_type == "encoder-decoder" and type(config).__name__ == "LoraConfig" and config.target_modules is None:
            # BERT2BERT: peft has no table for the wrapper; its encoder's names also match the decoder's
            # self- and cross-attention projections
            config.target_modules = LORA_TARGETS.get(model.config.encoder.model_type)
        if config.is_prompt_learning:
            for key, attr in PROMPT_SIZES.items():
                if getattr(config, key, None) is None and hasattr(model.config, attr):
                    setattr(config, key, getattr(model.config, attr))
        return config

    @staticmethod
    def _fill_targets(config: PeftConfig, model: PreTrainedModel, model_type: str) -> None:
        """Target modules for a model type that peft's table for this method leaves out."""
        extra = EXTRA_TARGETS.get(type(config).__name__, {}).get(model_type)
        if extra is not None and model_type not in LORA_TARGETS:
            for key, value in extra.items():
                setattr(config, key, value)
            return
        tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
        table = getattr(tuner, "target_module_mapping", None)
        if table is None or model_type in table or model_type == "encoder-decoder":
            return
        if type(config).__name__ == "LNTuningConfig":
            config.target_modules = norm_module_names(model) or None
        elif model_type in LORA_TARGETS:
            config.target_modules = list(LORA_TARGETS[model_type])
        elif model_type in EXTRA_TARGETS["LoraConfig"]:
            config.target_modules = list(EXTRA_TARGETS["LoraConfig"][model_type]["target_modules"])

    def apply(self, model: PreTrainedModel) -> nn.Module:
        config = self._config_for(model)
        try:
            wrapped = get_peft_model(model, config)
            if config.is_prompt_learning:  # incompatibilities show only in a forward pass: find them now
                with torch.no_grad():
                    wrapped.eval()(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long))
                wrapped.train()
            if mutating_init(config):  # kept to convert the export into LoRA for the untouched base
                self._initial_adapter = {k: v.detach().clone() for k, v in get_peft_model_state_dict(wrapped).items()}
        except (ValueError, TypeError, AttributeError, NotImplementedError, RuntimeError, KeyError) as err:
            hint = ("use tuning=prompt or tuning=lora instead" if config.is_prompt_learning
                    else "set tuning.peft.target_modules to the names of the attention projections")
            raise ConfigError(
                f"tuning={self.name} ({type(config).__name__}) does not work with {type(model).__name__} "
                f"(model_type '{getattr(model.config, 'model_type', '?')}'): {err}; {hint}"
            ) from err
        return wrapped

    def save(self, model: nn.Module, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        if self._initial_adapter is not None and mutating_init(model.peft_config["default"]):
            self._save_as_lora(model, Path(path))
        else:
            model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        if self.merge_on_export and not self.peft_config.is_prompt_learning:
            merged = copy.deepcopy(model).merge_and_unload()
            for name, module in list(merged.named_modules()):
                if isinstance(module, AuxiliaryTrainingWrapper):  # a task head LayerNorm tuning's unloading leaves wrapped
                    parent, _, child = name.rpartition(".")
                    setattr(merged.get_submodule(parent), child,
                            module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None))
            merged.save_pretrained(path / "merged")
            tokenizer.save_pretrained(path / "merged")

    def _save_as_lora(self, model: PeftModel, path: Path) -> None:
        """PiSSA/OLoRA trained ``W_res + B A`` from ``W = W_res + B0 A0``: save ``[B | -B0] [A ; A0]``, a LoRA
        adapter (rank 2r) for the original base, plus what peft's conversion leaves out (the task head)."""
        with tempfile.TemporaryDirectory() as tmp:
            initial = Path(tmp) / "initial"
            initial.mkdir()
            # a head put in modules_to_save after apply (multiple choice) is not in the initial adapter
            trained = get_peft_model_state_dict(model)
            start = {**{k: v.detach().contiguous() for k, v in trained.items() if k not in self._initial_adapter},
                     **self._initial_adapter}
            save_file(start, initial / SAFETENSORS_WEIGHTS_NAME)
            model.save_pretrained(path, path_initial_model_for_weight_conversion=str(initial))
        weights = path / SAFETENSORS_WEIGHTS_NAME
        converted = load_file(weights)
        others = {k: v.detach().contiguous() for k, v in trained.items() if "lora_A" not in k and "lora_B" not in k}
        save_file({**others, **converted}, weights, metadata={"format": "pt"})

    def load_pretrained(self, auto_class: type, model_cfg: Mapping[str, Any], path: Path, **config_kwargs: Any) -> nn.Module:
        base = load_model(auto_class, model_cfg, load_kwargs=self.load_kwargs(), **config_kwargs)
        return PeftModel.from_pretrained(base, path)
