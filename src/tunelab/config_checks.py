"""Config values checked before any work, each failure one ConfigError naming the key.

``check_config(cfg)`` needs only the config: every key of a node with a ``_target_`` must be an
argument of that class (a misspelt ``+optimizer.learning_rate`` gets "did you mean optimizer.lr?"),
and batch sizes, lengths, split sizes, the learning rate and the trainer's epoch/step limits must be
numbers that work, and ``model.gradient_checkpointing`` must go with the trainer and the tuning method.
``check_against_model(cfg, tokenizer)`` compares the lengths with the model's position limit once its
tokenizer is loaded.

Only ``_target_``s of the composed config (from ``configs/`` and the command line) are imported.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from tunelab.errors import ConfigError
from tunelab.optim import OWN_KEYS as OPTIMIZER_OWN_KEYS
from tunelab.optim import check_fused_choice, check_layer_decay

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
LENGTH_KEYS = ("task.data.max_length", "task.data.max_target_length", "task.data.block_size")
SANE_TOKENIZER_LIMIT = 1_000_000  # tokenizers without a limit report about 1e30


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the first key whose name or value cannot work."""
    check_keys(cfg)
    for key in ("task.data.batch_size", *LENGTH_KEYS):
        _whole(cfg, key, minimum=1)
    _whole(cfg, "task.data.eval_batch_size", minimum=1, optional=True)
    _whole(cfg, "task.data.max_tokens", minimum=1, optional=True)
    for key in ("task.data.val_size", "task.data.test_size"):
        _split_size(cfg, key)
    loss = _select(cfg, "task.loss")
    if loss is not _ABSENT:
        # imported here: tunelab.tasks imports the tuning methods, and one of them imports this module
        from tunelab.tasks.loss import check_loss_options

        labels = _select(cfg, "task.data.labels")
        check_loss_options(loss, None if labels in (_ABSENT, None) else [str(label) for label in labels])
    _whole(cfg, "trainer.max_epochs", minimum=-1, optional=True)
    _whole(cfg, "trainer.max_steps", minimum=-1)
    lr = _select(cfg, "optimizer.lr")
    if lr is not _ABSENT and not (_is_number(lr) and math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"optimizer.lr must be a number >= 0, got {lr!r}")
    fused = _select(cfg, "optimizer.fused")
    if fused is not _ABSENT:
        check_fused_choice(fused)
    layer_decay = _select(cfg, "optimizer.layer_decay")
    if layer_decay is not _ABSENT:
        check_layer_decay(layer_decay)
    _check_checkpointing(cfg)


def _check_checkpointing(cfg: DictConfig) -> None:
    """``model.gradient_checkpointing=true`` with neither FSDP's own checkpointing nor prefix tuning."""
    if _select(cfg, "model.gradient_checkpointing") is not True:
        return
    if _select(cfg, "trainer.strategy.activation_checkpointing") is True:
        raise ConfigError("model.gradient_checkpointing=true and trainer.strategy.activation_checkpointing=true would "
                          "both checkpoint every block: keep one (under trainer=fsdp, the strategy's)")
    if str(_select(cfg, "tuning.peft._target_")).endswith("PrefixTuningConfig"):
        raise ConfigError("tuning=prefix does not work with model.gradient_checkpointing=true: its prefixes are a "
                          "key/value cache, which checkpointed blocks drop (peft refuses the pair); set "
                          "model.gradient_checkpointing=false, or use tuning=prompt, ptuning or lora")


def check_against_model(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Lengths (``task.data.max_length``, ``max_target_length``, ``block_size``) must fit the model's
    positions: its config's ``max_position_embeddings`` and the tokenizer's ``model_max_length``."""
    from tunelab.models import load_config

    config = load_config(cfg.model)
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0 and getattr(config, "position_biased_input", True):
        limits.append((positions, f"max_position_embeddings of the model config ({cfg.model.name_or_path})"))
    declared = getattr(tokenizer, "model_max_length", None)
    # A tokenizer's model_max_length binds only a model with absolute positions; T5's relative ones take more.
    if limits and isinstance(declared, int) and 0 < declared < SANE_TOKENIZER_LIMIT:
        limits.append((declared, f"model_max_length of the tokenizer ({tokenizer.name_or_path})"))
    if not limits:
        return
    limit, source = min(limits)
    for key in LENGTH_KEYS:
        value = _select(cfg, key)
        if value is not _ABSENT and value is not None and value > limit:
            raise ConfigError(f"{key}={value} is above the model's position limit: {source} is {limit}; "
                              f"use {key}={limit} or less")


# --- keys ---------------------------------------------------------------------------------------
def check_keys(cfg: DictConfig) -> None:
    """Every key of a node with a ``_target_`` is an argument of its class (or function), or one tunelab reads
    itself (``optimizer.layer_decay``); nodes whose target takes ``**kwargs`` that cannot be followed to a base
    class are not checked."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for path, node in _target_nodes(tree, ""):
        target = node["_target_"]
        accepted = accepted_arguments(target)
        if accepted is None:
            continue
        for key in node:
            if key in HYDRA_KEYS or key in accepted or (path == "optimizer" and key in OPTIMIZER_OWN_KEYS):
                continue
            at = f"{path}.{key}" if path else key
            match = suggest(str(key), accepted)
            hint = f"did you mean {path}.{match}?" if match else f"it takes {', '.join(sorted(accepted))}"
            raise ConfigError(f"{at} is not an argument of {target}; {hint}")


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and "$" not in target:
            yield path, node
        for key, value in node.items():
            if path or key != "hydra":
                yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def accepted_arguments(target: str) -> set[str] | None:
    """Keyword arguments of ``target`` (a dotted class or function name); a tunelab class's
    ``**kwargs`` are followed to its base classes. None when unknown (unimportable, or ``**kwargs``
    passed to a library)."""
    try:
        obj = get_object(target)
    except Exception:  # a bad _target_: Hydra's instantiate reports it
        return None
    if not inspect.isclass(obj):
        params, forwards = _named(obj)
        return None if forwards else params
    names: set[str] = set()
    for klass in obj.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return names
        params, forwards = _named(init)
        names |= params
        if not forwards:
            return names
        if not klass.__module__.startswith("tunelab."):
            return None
    return names


def _named(function: Any) -> tuple[set[str], bool]:
    """The named parameters of ``function`` (not ``self``), and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def suggest(key: str, accepted: set[str]) -> str | None:
    """The accepted name ``key`` most likely meant: a close spelling, or its initials (``learning_rate`` -> ``lr``)."""
    close = difflib.get_close_matches(key, sorted(accepted), n=1)
    if close:
        return close[0]
    initials = "".join(word[0] for word in key.split("_") if word)
    return initials if len(initials) > 1 and initials in accepted else None


# --- values -------------------------------------------------------------------------------------
_ABSENT = object()


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(cfg: DictConfig, key: str, minimum: int, optional: bool = False) -> None:
    value = _select(cfg, key)
    if value is _ABSENT or (optional and value is None):
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        hint = " (-1: no limit)" if minimum == -1 else ""
        raise ConfigError(f"{key} must be a whole number >= {minimum}{hint}" + (" or null" if optional else "")
                          + f", got {value!r}")


def _split_size(cfg: DictConfig, key: str) -> None:
    """A held-out split's size: a count (>= 1) or a fraction of train (between 0 and 1)."""
    value = _select(cfg, key)
    if value is _ABSENT:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    if isinstance(value, float) and 0 < value < 1:
        return
    raise ConfigError(f"{key} must be a number of rows (>= 1) or a fraction of train (between 0 and 1), got {value!r}")
