"""Loading a run's export: missing weights and a model that would run its repository's code give one
line naming the file, and nothing from ``tunelab.json`` can turn remote code on by itself."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_rows
from tunelab.errors import TunelabError
from tunelab.exported import load_run_model
from tunelab.predict import main

LORA = {"_target_": "tunelab.tuning.Peft", "name": "lora", "peft": {"_target_": "peft.LoraConfig", "r": 8}}
ADAPTER = {"_target_": "tunelab.tuning.Adapter", "name": "adapter"}


def copy_run(run_dir: Path, dest: Path) -> Path:
    """What another user hands over: the run folder's config.yaml and model/."""
    dest.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    shutil.copytree(run_dir / "model", dest / "model")
    return dest


def edit_export(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    file = run_dir / "model" / "tunelab.json"
    info = json.loads(file.read_text())
    change(info)
    file.write_text(json.dumps(info))


def predict_cli(run_dir: Path, tmp_path: Path, *flags: str) -> int:
    data = tmp_path / "new.csv"
    make_rows(9, seed=5).to_csv(data, index=False)
    return main([str(run_dir), str(data), "-o", str(tmp_path / "out.csv"), *flags])


@pytest.mark.parametrize(("tuning", "weights"), [
    (None, "model.safetensors"),
    (LORA, "adapter_model.safetensors"),
    (ADAPTER, "adapters.safetensors"),
    ({"_target_": "tunelab.tuning.Distill", "student": LORA, "teacher": "x"}, "adapter_model.safetensors"),
])
def test_predict_on_an_export_without_its_weights_names_the_missing_file(
        tuning: dict | None, weights: str, finished_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    """Old: a transformers, peft or safetensors traceback."""
    run = copy_run(finished_run[0], tmp_path / "run")
    (run / "model" / "model.safetensors").unlink()
    if tuning is not None:
        edit_export(run, lambda info: info.update(tuning=tuning))
    assert predict_cli(run, tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{run / 'model' / weights} is missing" in err


def test_a_missing_shard_of_the_weights_is_named(finished_run: tuple[Path, dict], tmp_path: Path) -> None:
    run = copy_run(finished_run[0], tmp_path / "run")
    (run / "model" / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (run / "model" / "model.safetensors.index.json").write_text(json.dumps(index))
    (run / "model" / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(TunelabError, match=r"model-00002-of-00002\.safetensors is missing"):
        load_run_model(run)


def test_an_export_that_runs_remote_code_needs_the_flag(finished_run: tuple[Path, dict], tmp_path: Path, capsys) -> None:
    """Old: the export's own ``trust_remote_code: true`` was followed without asking."""
    run = copy_run(finished_run[0], tmp_path / "run")
    edit_export(run, lambda info: info["model"].update(trust_remote_code=True))
    assert predict_cli(run, tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run / 'model' / 'tunelab.json'}: model.trust_remote_code = true" in err and "--trust-remote-code" in err
    with pytest.raises(TunelabError, match="trust_remote_code"):
        load_run_model(run)
    assert predict_cli(run, tmp_path, "--trust-remote-code") == 0  # the user's own decision
    assert load_run_model(run, trust_remote_code=True) is not None


@pytest.mark.parametrize("key", ["config_kwargs", "config_overrides"])
def test_remote_code_cannot_be_smuggled_into_the_config_kwargs(key: str, finished_run: tuple[Path, dict],
                                                               tmp_path: Path) -> None:
    run = copy_run(finished_run[0], tmp_path / "run")
    where = (lambda info: info["config_kwargs"]) if key == "config_kwargs" else (lambda info: info["model"].setdefault(key, {}))
    edit_export(run, lambda info: where(info).update(trust_remote_code=True))
    with pytest.raises(TunelabError, match=rf"tunelab.json: [\w.]*{key}.trust_remote_code is not allowed"):
        load_run_model(run)
