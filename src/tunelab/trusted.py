"""What may be built from a file that tunelab reads: a run folder (or a checkpoint) is data, never code.

Hydra's ``instantiate`` calls whatever a ``_target_`` names, and OmegaConf calls a resolver for every
``${...}`` it resolves. So a tree read from a file (a run folder's ``model/tunelab.json`` and
``config.yaml``, a checkpoint's hyperparameters) is checked before anything is built from it:

- every ``_target_``, at any depth (in dicts and lists, ``_args_`` included), must name a class or
  function on an allow-list (``TUNING``, ``AUTO_CLASS``, ``TASK``, ``OPTIMIZER``). The dotted path is
  matched against the list's packages as a string first, so only modules inside those packages are
  ever imported, and what it names must be defined there and be of the expected kind;
- no string may hold an interpolation: tunelab writes these files resolved.

Loading weights follows the same rule: checkpoints are read with ``torch.load(weights_only=True)``,
which builds tensors and plain containers only and refuses any other pickled object.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tunelab.errors import TunelabError

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


@dataclass(frozen=True)
class Rule:
    """Classes defined in ``package`` (or its subpackages) that subclass ``base`` (a dotted path,
    imported when needed); with ``base=None``, plain functions defined there."""

    package: str
    base: str | None

    def covers(self, module: str) -> bool:
        return module == self.package or module.startswith(f"{self.package}.")

    def accepts(self, obj: Any) -> bool:
        if not self.covers(getattr(obj, "__module__", None) or ""):
            return False  # e.g. a name that a tunelab module imported from elsewhere
        if self.base is None:
            return inspect.isfunction(obj)
        module, _, name = self.base.rpartition(".")
        return inspect.isclass(obj) and issubclass(obj, getattr(importlib.import_module(module), name))


@dataclass(frozen=True)
class Allowed:
    """An allow-list: ``what`` says it in words for messages."""

    what: str
    rules: tuple[Rule, ...]


TUNING = Allowed("tunelab tuning strategies (tunelab.tuning.*) and peft configs (peft.*Config)",
                 (Rule("tunelab.tuning", "tunelab.tuning.base.TuningStrategy"), Rule("peft", "peft.config.PeftConfig")))
AUTO_CLASS = Allowed("transformers Auto model classes (transformers.AutoModelFor*)",
                     (Rule("transformers", "transformers.models.auto.auto_factory._BaseAutoModelClass"),))
TASK = Allowed("tunelab data modules, data sources and task modules (tunelab.data.*, tunelab.tasks.*)",
               (Rule("tunelab.data", "tunelab.data.base.TaskDataModule"), Rule("tunelab.data.sources", None),
                Rule("tunelab.tasks", "tunelab.tasks.base.TaskModule")))
OPTIMIZER = Allowed("torch optimizers (torch.optim.*) and bitsandbytes' (bitsandbytes.optim.*: paged, 8-bit)",
                    (Rule("torch.optim", "torch.optim.optimizer.Optimizer"),
                     Rule("bitsandbytes.optim", "torch.optim.optimizer.Optimizer")))


def _refuse(file: str | os.PathLike, key: str, value: Any, why: str) -> TunelabError:
    return TunelabError(f"{file}: {key} = {value!r} {why}")


def locate(target: Any, allowed: Allowed, file: str | os.PathLike, key: str) -> Any:
    """The object that ``target`` (a dotted path read from ``file`` at ``key``) names, if ``allowed``
    lists it; else a TunelabError. Nothing outside the listed packages is imported."""
    refused = _refuse(file, key, target, f"is not allowed: a run folder is data, never code; only {allowed.what} "
                                         "may be built from it")
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise refused
    module, _, name = target.rpartition(".")
    for rule in allowed.rules:
        if not rule.covers(module):
            continue
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if rule.accepts(obj):
            return obj
    raise refused


def _nodes(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    yield key, node
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _nodes(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _nodes(v, f"{key}[{i}]")


def _plain(tree: Any) -> Any:
    return OmegaConf.to_container(tree, resolve=False) if OmegaConf.is_config(tree) else tree


def check_interpolations(tree: Any, file: str | os.PathLike, key: str = "") -> None:
    """Refuse ``${...}`` anywhere in ``tree``: resolving it would call resolvers (``oc.env``, plugins')."""
    for path, node in _nodes(_plain(tree), key):
        if isinstance(node, str) and "${" in node:
            raise _refuse(file, path, node, "is an OmegaConf interpolation, which tunelab does not resolve in a file "
                                            "it reads (it writes them resolved)")


def check_targets(tree: Any, allowed: Allowed, file: str | os.PathLike, key: str = "") -> None:
    """Refuse any ``_target_`` in ``tree`` that ``allowed`` does not list."""
    for path, node in _nodes(_plain(tree), key):
        if isinstance(node, Mapping) and "_target_" in node:
            locate(node["_target_"], allowed, file, f"{path}._target_" if path else "_target_")


def check_tree(tree: Any, allowed: Allowed, file: str | os.PathLike, key: str = "") -> None:
    """``tree`` (read from ``file`` at ``key``) may be given to Hydra's instantiate."""
    check_interpolations(tree, file, key)
    check_targets(tree, allowed, file, key)


def read_config(path: str | os.PathLike, allowed: Mapping[str, Allowed]) -> DictConfig:
    """A yaml config read from a file (a run's ``config.yaml``): no interpolation anywhere, and the
    targets under each top-level key of ``allowed`` checked against its list."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise TunelabError(f"{path}: not a config (a yaml mapping)")
    check_interpolations(cfg, path)
    for key, listed in allowed.items():
        check_targets(cfg.get(key), listed, path, key)
    return cfg


def check_remote_code(model_cfg: Mapping[str, Any] | None, file: str | os.PathLike, allowed: bool, how: str) -> None:
    """Refuse a model config read from ``file`` that asks to run its repository's own Python code
    (``model.trust_remote_code``), unless the user allowed it (``how`` tells how)."""
    if model_cfg and model_cfg.get("trust_remote_code") and not allowed:
        raise TunelabError(
            f"{file}: model.trust_remote_code = true: loading this model runs Python code from its model "
            f"repository ({model_cfg.get('name_or_path')}); {how} allows it, for a run and a repository you trust"
        )


def load_checkpoint(path: str | os.PathLike, map_location: Any = None, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only. A file holding other pickled
    objects (which would run code when unpickled) is refused with a TunelabError naming it. ``mmap``: map the
    tensors instead of reading them (a check of a large checkpoint)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line),
                      str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise TunelabError(
            f"{path}: refused to load this checkpoint: it holds Python objects other than tensors and plain data, "
            f"which would run code when unpickled ({detail}). Checkpoints that tunelab writes hold none; use one "
            "from a run you trust"
        ) from err
