"""Tokenizers and backbones from a ``model/*.yaml`` config, through the transformers Auto classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from tunelab.errors import ConfigError
from tunelab.hub import hub_errors

_FIX = "Point model.name_or_path (and model.tokenizer) at a local copy, e.g. model.name_or_path=/data/{name}."


def _fix(name: str) -> str:
    return _FIX.format(name=name.split("/")[-1])


def tokenizer_name(model_cfg: Mapping[str, Any]) -> str:
    return model_cfg.get("tokenizer") or model_cfg["name_or_path"]


def load_tokenizer(model_cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    name = tokenizer_name(model_cfg)
    with hub_errors("tokenizer", name, _fix(name)):
        return AutoTokenizer.from_pretrained(name, revision=model_cfg.get("revision"))


def load_config(model_cfg: Mapping[str, Any], **config_kwargs: Any) -> PretrainedConfig:
    name = model_cfg["name_or_path"]
    overrides = dict(model_cfg.get("config_overrides") or {})
    with hub_errors("model config", name, _fix(name)):
        return AutoConfig.from_pretrained(name, revision=model_cfg.get("revision"), **overrides, **config_kwargs)


def check_pairing(auto_class: type, config: PretrainedConfig, model_cfg: Mapping[str, Any]) -> None:
    """A clear error when the model has no head of the kind the task needs (e.g. QA on T5)."""
    mapping = getattr(auto_class, "_model_mapping", None)
    if mapping is not None and type(config) not in mapping:
        raise ConfigError(
            f"model '{model_cfg.get('name', model_cfg['name_or_path'])}' ({config.model_type}) has no "
            f"{auto_class.__name__} head, which this task needs; pick a model= that has one "
            f"(e.g. an encoder such as bert/minilm for classification and QA, t5-small/bart-base for "
            f"seq2seq, gpt2 for causal LM)"
        )


def load_model(auto_class: type, model_cfg: Mapping[str, Any], **config_kwargs: Any) -> PreTrainedModel:
    """Pretrained weights from ``name_or_path``, or random init when ``from_scratch`` is set."""
    config = load_config(model_cfg, **config_kwargs)
    check_pairing(auto_class, config, model_cfg)
    dtype = getattr(torch, model_cfg["dtype"]) if model_cfg.get("dtype") else None
    if model_cfg.get("from_scratch"):
        return auto_class.from_config(config, dtype=dtype)
    name = model_cfg["name_or_path"]
    with hub_errors("model", name, _fix(name)):
        return auto_class.from_pretrained(
            name, config=config, revision=model_cfg.get("revision"), dtype=dtype, ignore_mismatched_sizes=True
        )
