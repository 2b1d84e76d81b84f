"""Hub models and datasets: offline, a Hub run fails at once with one message saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import compose_train
from tunelab import hub
from tunelab.errors import HubUnavailableError
from tunelab.train import run

ROOT = Path(__file__).resolve().parents[1]


def test_bert_sst2_offline_names_the_model_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(HubUnavailableError) as err:
        run(compose_train(tmp_path, "model=bert", "task=sentiment"))
    message = str(err.value)
    assert "'bert-base-uncased'" in message and "model.name_or_path" in message


def test_hub_dataset_offline_names_the_dataset_and_local_files_fix(tmp_path: Path) -> None:
    with pytest.raises(HubUnavailableError) as err:
        run(compose_train(tmp_path, "model=tiny", "task=sentiment"))
    message = str(err.value)
    assert "'nyu-mll/glue/sst2'" in message and "task.data.source.data_files.train=" in message


def test_unreachable_hub_switches_to_offline_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HF_HUB_OFFLINE set, endpoint refuses connections: one probe, then offline mode."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.hub_reachable.cache_clear()
    try:
        assert hub.check_hub() is False
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
        from tunelab.models import load_tokenizer

        with pytest.raises(HubUnavailableError, match="could not fetch tokenizer 'roberta-base'"):
            load_tokenizer({"name_or_path": "roberta-base"})
    finally:
        hub.hub_reachable.cache_clear()


def test_cli_prints_one_error_line_and_exits_1(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_RUNS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "train.py", "model=bert", "task=sentiment"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "could not fetch tokenizer 'bert-base-uncased'" in output
    assert "Traceback" not in output
    (folder,) = tmp_path.glob("sentiment-bert-full/*")
    assert '"status": "failed"' in (folder / "status.json").read_text()
