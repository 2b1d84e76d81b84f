"""Remote code: a model repository's own Python code runs only when the user sets
``model.trust_remote_code=true``; ``config_overrides`` cannot turn it on."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from tests.helpers import compose_train
from tunelab.errors import ConfigError
from tunelab.models import load_config, load_model, load_tokenizer


@pytest.fixture(scope="module", autouse=True)
def modules_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """transformers copies a repository's code here before importing it (instead of into ~/.cache)."""
    from transformers import dynamic_module_utils

    path = list(sys.path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf-modules")))
        yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m.split(".")[0] == "transformers_modules"]:
        del sys.modules[name]


@pytest.fixture
def remote_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model folder whose config class is in its own ``remote_config.py``, which writes a marker file
    when imported; and the marker's path."""
    folder, marker = tmp_path / "remote-model", tmp_path / "marker"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "tunelab-remote", "auto_map": {"AutoConfig": "remote_config.RemoteConfig"}}))
    (folder / "remote_config.py").write_text(
        f"from pathlib import Path\n\nfrom transformers import PretrainedConfig\n\nPath({str(marker)!r}).write_text('ran')\n\n\n"
        "class RemoteConfig(PretrainedConfig):\n    model_type = 'tunelab-remote'\n")
    return folder, marker


LOADERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "config": load_config,
    "tokenizer": load_tokenizer,
    "model": lambda cfg: load_model(AutoModelForSequenceClassification, cfg),
    "encoder-decoder": lambda cfg: load_model(AutoModelForSeq2SeqLM, {
        **cfg, "encoder_decoder": {"encoder": cfg["name_or_path"], "decoder": cfg["name_or_path"]}}),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_config_overrides_cannot_turn_on_remote_code(loader: str, remote_model: tuple[Path, Path]) -> None:
    """Old: AutoConfig got trust_remote_code=True from the overrides and ran the repository's code."""
    folder, marker = remote_model
    with pytest.raises(ConfigError, match=r"model.config_overrides.trust_remote_code is not allowed: set "
                                          r"model.trust_remote_code=true"):
        LOADERS[loader]({"name_or_path": str(folder), "config_overrides": {"trust_remote_code": True}})
    assert not marker.exists()


def test_remote_code_runs_only_with_model_trust_remote_code(remote_model: tuple[Path, Path]) -> None:
    folder, marker = remote_model
    with pytest.raises(ValueError, match=r"trust_remote_code=True"):
        load_config({"name_or_path": str(folder)})
    assert not marker.exists()
    config = load_config({"name_or_path": str(folder), "trust_remote_code": True})
    assert type(config).__name__ == "RemoteConfig" and marker.exists()
    with pytest.raises(ConfigError, match=r"model\.trust_remote_code must be true or false"):
        load_config({"name_or_path": str(folder), "trust_remote_code": "yes"})


def test_trust_remote_code_is_a_model_key_that_defaults_to_false(tmp_path: Path) -> None:
    """Old: no such key (Hydra asked for ``+model.trust_remote_code``, which then did nothing)."""
    assert compose_train(tmp_path, "model=bert").model.trust_remote_code is False
    assert compose_train(tmp_path, "model=tiny", "model.trust_remote_code=true").model.trust_remote_code is True
