"""Hydra/OmegaConf set-up shared by the entry points and the tests."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from tunelab import assets, identity

CONFIG_DIR = Path(os.environ.get("TUNELAB_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


def register_resolvers() -> None:
    """``${asset:NAME}``: a shipped offline asset (see ``tunelab.assets``); run identity resolvers
    (``config_hash``, ``run_folder``, ``wandb_id``, see ``tunelab.identity``)."""
    OmegaConf.register_new_resolver("asset", assets.resolve, replace=True)
    OmegaConf.register_new_resolver("config_hash", identity.config_hash, replace=True)
    OmegaConf.register_new_resolver("run_folder", identity.run_folder, replace=True)
    OmegaConf.register_new_resolver("wandb_id", identity.wandb_id, replace=True)


register_resolvers()
