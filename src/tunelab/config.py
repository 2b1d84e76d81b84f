"""Hydra/OmegaConf set-up shared by the entry points and the tests."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from tunelab import assets

CONFIG_DIR = Path(os.environ.get("TUNELAB_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))


def register_resolvers() -> None:
    """``${asset:NAME}``: a shipped offline asset (see ``tunelab.assets``)."""
    OmegaConf.register_new_resolver("asset", assets.resolve, replace=True)


register_resolvers()
