"""The Hydra plugin: registers ``hydra/sweeper=tunelab`` and hands the sweep to ``tunelab.search.sweep``.

Hydra imports this module at every start (plugin discovery): Optuna and the search itself are imported only
when a sweep runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from tunelab.search.config import SweeperConf

log = logging.getLogger(__name__)
ConfigStore.instance().store(group="hydra/sweeper", name="tunelab", node=SweeperConf, provider="tunelab")


class TunelabOptunaSweeper(Sweeper):
    """Runs trials of one Optuna study, shared with any other process that runs the same search."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from tunelab.errors import find_tunelab_error
        from tunelab.search.sweep import Search, Settings

        assert self.hydra_context is not None and self.launcher is not None
        launcher = self.launcher
        try:
            search = Search(Settings.from_config(**self.settings),
                            launch=lambda batch, first: launcher.launch(batch, initial_job_idx=first),
                            validate=self.validate_batch_is_legal,
                            parser=OverridesParser.create(config_loader=self.hydra_context.config_loader))
            return search.run(arguments)
        except Exception as err:
            cause = find_tunelab_error(err)
            if cause is None:
                raise
            log.error("%s", cause)  # the user's problem, in one line, as tunelab-train reports it
            sys.exit(1)
