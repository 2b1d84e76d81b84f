"""Exported models: what ``<run>/model`` holds and how to load it back, whatever the tuning method.

Besides the weights in the strategy's format (Hugging Face, PEFT adapter, ...), the export holds
``tunelab.json``: the Auto class, the base model config, the tuning config and the config kwargs
(e.g. label names), which is all that is needed to rebuild the model. A run folder may come from
anyone, so ``tunelab.json`` is checked before anything is built from it (see ``tunelab.trusted``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from torch import nn

from tunelab.errors import TunelabError
from tunelab.models import remote_code
from tunelab.trusted import AUTO_CLASS, TUNING, check_remote_code, check_tree, locate

EXPORT_INFO = "tunelab.json"
# The files an export's weights are in (one of each tuple is needed), by the format the strategy saves.
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
REMOTE_CODE_FLAG = "tunelab-predict --trust-remote-code (or load_run_model(..., trust_remote_code=True))"


def export_info(auto_class: type, model_cfg: dict, tuning_cfg: dict | None, config_kwargs: dict) -> dict[str, Any]:
    return {
        "auto_class": f"{auto_class.__module__}.{auto_class.__qualname__}",
        "model": model_cfg,
        "tuning": tuning_cfg,
        "config_kwargs": config_kwargs,
    }


def write_export_info(path: Path, info: dict[str, Any]) -> None:
    (path / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")


def read_export_info(model_dir: str | os.PathLike) -> dict[str, Any]:
    """``tunelab.json``, refused (TunelabError naming the file and key) when it names anything to build
    other than tunelab tuning strategies, peft configs and a transformers Auto class, holds an
    interpolation, or smuggles ``trust_remote_code`` into the config kwargs."""
    file = Path(model_dir) / EXPORT_INFO
    if not file.is_file():
        raise TunelabError(f"{model_dir} is not a tunelab export (no {EXPORT_INFO})")
    try:
        info = json.loads(file.read_text())
    except ValueError as err:
        raise TunelabError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(info, dict):
        raise TunelabError(f"{file}: not a tunelab export description (a JSON object)")
    check_tree(info, TUNING, file)
    locate(info.get("auto_class"), AUTO_CLASS, file, "auto_class")
    for key, kwargs in (("config_kwargs", info.get("config_kwargs")),
                        ("model.config_overrides", (info.get("model") or {}).get("config_overrides"))):
        if isinstance(kwargs, dict) and "trust_remote_code" in kwargs:
            raise TunelabError(f"{file}: {key}.trust_remote_code is not allowed: only model.trust_remote_code "
                               f"says whether a model may run its repository's code, and {REMOTE_CODE_FLAG} allows it")
    info.setdefault("config_kwargs", {})
    # JSON turns id2label's int keys into strings
    if "id2label" in info["config_kwargs"]:
        info["config_kwargs"]["id2label"] = {int(k): v for k, v in info["config_kwargs"]["id2label"].items()}
    return info


def weight_files(tuning_cfg: dict[str, Any] | None, file: str | os.PathLike) -> tuple[str, ...]:
    """The names the export's weights may have, by the format of the strategy that wrote them."""
    from tunelab.tuning import Adapter, Distill, Peft
    from tunelab.tuning.adapter import WEIGHTS_FILE

    if not tuning_cfg:
        return HF_WEIGHTS
    strategy = locate(tuning_cfg["_target_"], TUNING, file, "tuning._target_")
    if issubclass(strategy, Distill):  # saved as its student saves
        return weight_files(tuning_cfg.get("student"), file)
    if issubclass(strategy, Peft):
        return PEFT_WEIGHTS
    if issubclass(strategy, Adapter):
        return (WEIGHTS_FILE,)
    return HF_WEIGHTS


def check_weights(model_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    """A TunelabError naming the missing file when the export's weights (or a shard of them) are gone."""
    model_dir = Path(model_dir)
    names = weight_files(info.get("tuning"), model_dir / EXPORT_INFO)
    found = next((model_dir / n for n in names if (model_dir / n).is_file()), None)
    if found is None:
        others = f" (nor {', '.join(names[1:])})" if len(names) > 1 else ""
        raise TunelabError(f"{model_dir / names[0]} is missing{others}: the run folder has no exported weights; "
                           "copy the whole run folder again from where it was trained")
    if found.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(found.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise TunelabError(f"{found}: not a valid weights index ({err})") from err
        for shard in shards:
            if not (model_dir / shard).is_file():
                raise TunelabError(f"{model_dir / shard} is missing: a shard of the exported weights ({found.name} "
                                   "lists it); copy the whole run folder again from where it was trained")


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "model" / EXPORT_INFO).is_file()


def load_run_model(run_dir: str | os.PathLike, trust_remote_code: bool = False) -> nn.Module:
    """The tuned model of a finished run, as a plain ``nn.Module`` (e.g. a distillation teacher).
    A model whose config says ``trust_remote_code: true`` is refused unless ``trust_remote_code``."""
    path = Path(run_dir) / "model"
    info = read_export_info(path)
    check_remote_code(info.get("model"), path / EXPORT_INFO, trust_remote_code, REMOTE_CODE_FLAG)
    check_weights(path, info)
    auto_class = locate(info["auto_class"], AUTO_CLASS, path / EXPORT_INFO, "auto_class")
    if not info["tuning"]:
        return auto_class.from_pretrained(path, trust_remote_code=remote_code(info.get("model") or {}))
    tuning = instantiate(info["tuning"])
    return tuning.load_pretrained(auto_class, info["model"], path, **info["config_kwargs"])
