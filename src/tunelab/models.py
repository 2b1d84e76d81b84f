"""Tokenizers and backbones from a ``model/*.yaml`` config, through the transformers Auto classes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunelab.errors import ConfigError
from tunelab.hub import hub_errors

log = logging.getLogger(__name__)
_FIX = "Point model.name_or_path (and model.tokenizer) at a local copy, e.g. model.name_or_path=/data/{name}."


def _fix(name: str) -> str:
    return _FIX.format(name=name.split("/")[-1])


def tokenizer_name(model_cfg: Mapping[str, Any]) -> str:
    return model_cfg.get("tokenizer") or model_cfg["name_or_path"]


def remote_code(model_cfg: Mapping[str, Any]) -> bool:
    """``model.trust_remote_code`` (default false): whether transformers may run the Python code of the
    model's repository. Only this key says so; ``config_overrides`` cannot."""
    if "trust_remote_code" in (model_cfg.get("config_overrides") or {}):
        raise ConfigError(
            "model.config_overrides.trust_remote_code is not allowed: set model.trust_remote_code=true to let a "
            "model run its repository's own code (only for a repository you trust)"
        )
    value = model_cfg.get("trust_remote_code") or False
    if not isinstance(value, bool):
        raise ConfigError(f"model.trust_remote_code must be true or false, got {value!r}")
    return value


ARCHITECTURES = ("encoder", "encoder-decoder", "decoder")


def architecture(model_cfg: Mapping[str, Any]) -> str:
    """``model.architecture``: what generative tasks do with the model (``decoder``: prompt -> completion with
    a causal LM; ``encoder-decoder``: source -> target). Classification, QA, ... take any of them."""
    value = model_cfg.get("architecture") or ("encoder-decoder" if model_cfg.get("encoder_decoder") else "encoder")
    if value not in ARCHITECTURES:
        raise ConfigError(f"model.architecture must be one of {list(ARCHITECTURES)}, got {value!r}")
    return value


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Decoders' tokenizers often have no pad token (GPT-2, Llama 3): pad with eos. Padding is never a target
    (``IGNORE_INDEX``) and never attended to, and models find the last real token from the attention mask or
    ``config.pad_token_id`` (set to the same id by ``load_model``)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer {tokenizer.name_or_path} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer has no pad token: padding with eos (%s)", tokenizer.eos_token)
    return tokenizer


def load_tokenizer(model_cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    name = tokenizer_name(model_cfg)
    with hub_errors("tokenizer", name, _fix(name)):
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_cfg.get("revision"),
                                                  trust_remote_code=remote_code(model_cfg))
    return ensure_pad_token(tokenizer)


def model_path(name: str) -> str:
    """``name``, or the merged model beside a PEFT adapter export (``<run>/model/merged``): a tuned
    model used as the base of a later run (e.g. MLM domain adaptation, then classification)."""
    folder = Path(name)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return name
    if (folder / "merged" / "config.json").is_file():
        log.info("%s holds a PEFT adapter: using the merged model in %s/merged", name, name)
        return str(folder / "merged")
    raise ConfigError(
        f"{name} holds only a PEFT adapter, not a full model to start from: export the merged model with "
        f"tuning.merge_on_export=true in the run that made it, or merge it yourself (peft merge_and_unload)"
    )


def load_config(model_cfg: Mapping[str, Any], **config_kwargs: Any) -> PretrainedConfig:
    name = model_path(model_cfg["name_or_path"])
    trust = remote_code(model_cfg)
    overrides = dict(model_cfg.get("config_overrides") or {})
    with hub_errors("model config", name, _fix(name)):
        return AutoConfig.from_pretrained(name, revision=model_cfg.get("revision"), trust_remote_code=trust,
                                          **overrides, **config_kwargs)


def is_decoder(config: PretrainedConfig) -> bool:
    """A decoder-only model type: it has a causal-LM head and no masked-LM one (BERT has both)."""
    return type(config) in AutoModelForCausalLM._model_mapping and type(config) not in AutoModelForMaskedLM._model_mapping


def check_pairing(auto_class: type, config: PretrainedConfig, model_cfg: Mapping[str, Any]) -> None:
    """A clear error when the model has no head of the kind the task needs (e.g. QA on T5)."""
    declared = architecture(model_cfg)
    if declared == "decoder" and getattr(config, "is_encoder_decoder", False):
        raise ConfigError(
            f"model.architecture=decoder, but '{model_cfg['name_or_path']}' ({config.model_type}) is an "
            f"encoder-decoder: set model.architecture=encoder-decoder"
        )
    mapping = getattr(auto_class, "_model_mapping", None)
    if mapping is not None and type(config) not in mapping and auto_class is AutoModelForSeq2SeqLM and is_decoder(config):
        raise ConfigError(
            f"model '{model_cfg.get('name', model_cfg['name_or_path'])}' ({config.model_type}) is a decoder, but "
            f"model.architecture={declared}: set model.architecture=decoder (a decoder preset such as "
            f"model=smollm2-135m has it), and generative tasks train it on prompt -> completion"
        )
    if mapping is not None and type(config) not in mapping and auto_class is AutoModelForSeq2SeqLM:
        raise ConfigError(
            f"model '{model_cfg.get('name', model_cfg['name_or_path'])}' ({config.model_type}) is not an "
            f"encoder-decoder, which this seq2seq task needs: use model=minilm2minilm (a BERT2BERT "
            f"EncoderDecoderModel warm-started from MiniLM; any encoder works with model.encoder_decoder="
            f"{{encoder: ..., decoder: ...}}) or a seq2seq model such as model=t5-small, bart-base, marian-en-ro"
        )
    if mapping is not None and type(config) not in mapping:
        raise ConfigError(
            f"model '{model_cfg.get('name', model_cfg['name_or_path'])}' ({config.model_type}) has no "
            f"{auto_class.__name__} head, which this task needs; pick a model= that has one "
            f"(e.g. an encoder such as bert/minilm for classification and QA, t5-small/bart-base for "
            f"seq2seq, gpt2 for causal LM)"
        )


def load_model(auto_class: type, model_cfg: Mapping[str, Any], load_kwargs: Mapping[str, Any] | None = None,
               **config_kwargs: Any) -> PreTrainedModel:
    """Pretrained weights from ``name_or_path``, or random init when ``from_scratch`` is set. ``load_kwargs``
    go to ``from_pretrained`` (a tuning strategy's ``load_kwargs()``, e.g. tuning=qlora's 4-bit quantisation)."""
    if load_kwargs and (model_cfg.get("encoder_decoder") or model_cfg.get("from_scratch")):
        raise ConfigError(f"the tuning loads pretrained weights with {', '.join(sorted(load_kwargs))} (tuning=qlora "
                          "quantises them), which model.from_scratch and model.encoder_decoder do not load: use a "
                          "pretrained checkpoint")
    if model_cfg.get("encoder_decoder"):
        return with_checkpointing(load_encoder_decoder(auto_class, model_cfg, **config_kwargs), model_cfg)
    config = load_config(model_cfg, **config_kwargs)
    check_pairing(auto_class, config, model_cfg)
    if getattr(config, "pad_token_id", None) is None:  # decoders: sequence classification finds the last real token by it
        config.pad_token_id = load_tokenizer(model_cfg).pad_token_id
    dtype = getattr(torch, model_cfg["dtype"]) if model_cfg.get("dtype") else None
    trust = remote_code(model_cfg)
    if model_cfg.get("from_scratch"):
        return with_checkpointing(auto_class.from_config(config, dtype=dtype, trust_remote_code=trust), model_cfg)
    name = model_path(model_cfg["name_or_path"])
    with hub_errors("model", name, _fix(name)):
        model = auto_class.from_pretrained(
            name, config=config, revision=model_cfg.get("revision"), dtype=dtype, ignore_mismatched_sizes=True,
            trust_remote_code=trust, **(load_kwargs or {}),
        )
    return with_checkpointing(model, model_cfg)


def with_checkpointing(model: PreTrainedModel, model_cfg: Mapping[str, Any]) -> PreTrainedModel:
    """``model.gradient_checkpointing=true``: each block's activations are recomputed in the backward pass
    instead of kept (less memory, about a third more compute). Non-reentrant checkpointing, so gradients
    reach the trainable parameters inside a block whatever the tuning method freezes around it."""
    value = model_cfg.get("gradient_checkpointing") or False
    if not isinstance(value, bool):
        raise ConfigError(f"model.gradient_checkpointing must be true or false, got {value!r}")
    if not value:
        return model
    if not model.supports_gradient_checkpointing:
        raise ConfigError(f"model.gradient_checkpointing=true, but {type(model).__name__} does not support "
                          "gradient checkpointing: set model.gradient_checkpointing=false")
    # transformers 5.x: activation_checkpointing_enable is the new name (the old one warns from 5.2x on)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    return model


def load_encoder_decoder(auto_class: type, model_cfg: Mapping[str, Any], **config_kwargs: Any) -> PreTrainedModel:
    """A BERT2BERT-style ``EncoderDecoderModel`` warm-started from two encoder checkpoints
    (``model.encoder_decoder: {encoder, decoder, tie_encoder_decoder}``; Rothe et al., 2020).

    The decoder gets causal self-attention and new cross-attention layers; generation starts with
    the tokenizer's [CLS] (or BOS) and stops at [SEP] (or EOS). ``config_overrides`` apply to both
    sides; ``from_scratch`` builds both from their configs with random weights.
    """
    if auto_class is not AutoModelForSeq2SeqLM:
        raise ConfigError(
            f"model.encoder_decoder builds a seq2seq EncoderDecoderModel, but this task needs {auto_class.__name__}: "
            "use a model without encoder_decoder (e.g. model=minilm)"
        )
    spec = dict(model_cfg["encoder_decoder"])
    unknown = set(spec) - {"encoder", "decoder", "tie_encoder_decoder"}
    if unknown or not spec.get("encoder") or not spec.get("decoder"):
        raise ConfigError(
            f"model.encoder_decoder needs 'encoder' and 'decoder' (checkpoint names or paths) and takes "
            f"'tie_encoder_decoder'; got {sorted(spec)}"
        )
    tokenizer = load_tokenizer(model_cfg)
    trust = remote_code(model_cfg)
    overrides = dict(model_cfg.get("config_overrides") or {})
    side_cfgs = {}
    for side in ("encoder", "decoder"):
        with hub_errors(f"{side} config", spec[side], _fix(spec[side])):
            side_cfgs[side] = AutoConfig.from_pretrained(spec[side], revision=model_cfg.get("revision"),
                                                         trust_remote_code=trust, **overrides)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        side_cfgs["encoder"], side_cfgs["decoder"], tie_encoder_decoder=bool(spec.get("tie_encoder_decoder")), **config_kwargs
    )
    if model_cfg.get("from_scratch"):
        model = EncoderDecoderModel(config=config)
    else:
        with hub_errors("model", f"{spec['encoder']} + {spec['decoder']}", _fix(spec["encoder"])):
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                spec["encoder"], spec["decoder"], encoder_config=config.encoder, decoder_config=config.decoder,
                encoder_trust_remote_code=trust, decoder_trust_remote_code=trust,
                tie_encoder_decoder=config.tie_encoder_decoder, **config_kwargs,
            )
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise ConfigError(
            f"tokenizer '{tokenizer_name(model_cfg)}' needs [CLS]/[SEP] (or BOS/EOS) and a pad token to start, "
            "end and pad the decoder's output"
        )
    for target in (model.config, model.generation_config):
        target.decoder_start_token_id, target.eos_token_id, target.pad_token_id = start, end, tokenizer.pad_token_id
    if dtype := model_cfg.get("dtype"):
        model = model.to(getattr(torch, dtype))
    return model
