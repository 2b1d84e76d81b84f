"""Tokenizers and backbones from a ``model/*.yaml`` config, through the transformers Auto classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

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


def load_model(auto_class: type, model_cfg: Mapping[str, Any], **config_kwargs: Any) -> PreTrainedModel:
    """Pretrained weights from ``name_or_path``, or random init when ``from_scratch`` is set."""
    config = load_config(model_cfg, **config_kwargs)
    dtype = getattr(torch, model_cfg["dtype"]) if model_cfg.get("dtype") else None
    if model_cfg.get("from_scratch"):
        return auto_class.from_config(config, dtype=dtype)
    name = model_cfg["name_or_path"]
    with hub_errors("model", name, _fix(name)):
        return auto_class.from_pretrained(
            name, config=config, revision=model_cfg.get("revision"), dtype=dtype, ignore_mismatched_sizes=True
        )
