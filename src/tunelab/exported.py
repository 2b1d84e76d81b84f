"""Exported models: what ``<run>/model`` holds and how to load it back, whatever the tuning method.

Besides the weights in the strategy's format (Hugging Face, PEFT adapter, ...), the export holds
``tunelab.json``: the Auto class, the base model config, the tuning config and the config kwargs
(e.g. label names), which is all that is needed to rebuild the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from torch import nn

from tunelab.errors import TunelabError

EXPORT_INFO = "tunelab.json"


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
    file = Path(model_dir) / EXPORT_INFO
    if not file.is_file():
        raise TunelabError(f"{model_dir} is not a tunelab export (no {EXPORT_INFO})")
    info = json.loads(file.read_text())
    # JSON turns id2label's int keys into strings
    if "id2label" in info["config_kwargs"]:
        info["config_kwargs"]["id2label"] = {int(k): v for k, v in info["config_kwargs"]["id2label"].items()}
    return info


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "model" / EXPORT_INFO).is_file()


def load_run_model(run_dir: str | os.PathLike) -> nn.Module:
    """The tuned model of a finished run, as a plain ``nn.Module`` (e.g. a distillation teacher)."""
    path = Path(run_dir) / "model"
    info = read_export_info(path)
    tuning = instantiate(info["tuning"]) if info["tuning"] else None
    auto_class = get_class(info["auto_class"])
    if tuning is None:
        return auto_class.from_pretrained(path)
    return tuning.load_pretrained(auto_class, info["model"], path, **info["config_kwargs"])
