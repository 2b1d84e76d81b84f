"""A run folder and a checkpoint are data, never code (``tunelab.trusted``): what their files name is
built only when it is one of tunelab's own classes (or a peft config / transformers Auto class), no
interpolation in them is resolved, and checkpoints load as tensors and plain data only.

Each payload below runs code (it writes a marker file) when the old code reads the folder; the tests
check that every entry point refuses it with one message naming the file and the key, and that the
marker never appears."""

from __future__ import annotations

import json
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tests.test_exported import copy_run, edit_export, predict_cli
from tunelab.callbacks import AtomicCheckpointIO
from tunelab.errors import TunelabError
from tunelab.exported import load_run_model
from tunelab.tasks import SequenceClassificationModule
from tunelab.train import run


def touch(path: str) -> None:
    Path(path).write_text("the payload ran")


class Payload:
    """Unpickled, it writes ``marker`` (any code could run there)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return touch, (self.marker,)


class Attack:
    """A marker file, and payloads that write it: a pickle, a module that writes it when imported, and
    an OmegaConf resolver (as a plugin could register) that writes it when resolved."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.marker = tmp_path / "marker"
        self.pickle = tmp_path / "payload.pt"
        torch.save(Payload(self.marker), self.pickle)
        self.module = f"tunelab_payload_{uuid.uuid4().hex}"
        (tmp_path / f"{self.module}.py").write_text(f"from pathlib import Path\nPath({str(self.marker)!r}).write_text('ran')\n"
                                                    "class AutoModelForSequenceClassification:\n    pass\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        OmegaConf.register_new_resolver("tunelab_payload", lambda: touch(str(self.marker)) or "x", replace=True)

    @property
    def unpickle(self) -> dict[str, Any]:
        return {"_target_": "torch.load", "f": str(self.pickle), "weights_only": False}

    def ran(self) -> bool:
        return self.marker.exists()


@pytest.fixture
def attack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Attack]:
    yield Attack(tmp_path, monkeypatch)
    OmegaConf.clear_resolver("tunelab_payload")


# name -> (change to tunelab.json, the key the refusal names)
EXPORT_PAYLOADS: dict[str, tuple[Callable[[dict, Attack], None], str]] = {
    "peft config": (lambda info, a: info.update(tuning={"_target_": "tunelab.tuning.Peft", "peft": a.unpickle}),
                    "tuning.peft._target_ = 'torch.load'"),
    "nested argument": (lambda info, a: info["tuning"].update(name=a.unpickle), "tuning.name._target_ = 'torch.load'"),
    "positional argument": (lambda info, a: info.update(tuning={"_target_": "tunelab.tuning.Full", "_args_": [a.unpickle]}),
                            "tuning._args_[0]._target_"),
    "path through a tunelab module": (lambda info, a: info.update(tuning={**a.unpickle, "_target_": "tunelab.tuning.base.torch.load"}),
                                      "tuning._target_ = 'tunelab.tuning.base.torch.load'"),
    "interpolation": (lambda info, a: info["tuning"].update(name="${tunelab_payload:}"), "tuning.name = '${tunelab_payload:}'"),
    "auto class": (lambda info, a: info.update(auto_class=f"{a.module}.AutoModelForSequenceClassification"), "auto_class = "),
}


def live(name: str, info: dict, attack: Attack) -> None:
    """What the old ``load_run_model`` did with the tree: the payload is real."""
    if name == "auto class":
        get_class(info["auto_class"])
    else:
        instantiate(info["tuning"])


@pytest.fixture
def crafted(finished_run: tuple[Path, dict], tmp_path: Path) -> Path:
    return copy_run(finished_run[0], tmp_path / "crafted")


@pytest.mark.parametrize("name", sorted(EXPORT_PAYLOADS))
def test_the_payloads_run_code_when_built_without_the_check(name: str, crafted: Path, attack: Attack) -> None:
    change, _ = EXPORT_PAYLOADS[name]
    edit_export(crafted, lambda info: change(info, attack))
    info = json.loads((crafted / "model" / "tunelab.json").read_text())
    live(name, info, attack)
    assert attack.ran()


@pytest.mark.parametrize("entry", ["tunelab-predict", "load_run_model"])
@pytest.mark.parametrize("name", sorted(EXPORT_PAYLOADS))
def test_a_crafted_tunelab_json_is_refused(name: str, entry: str, crafted: Path, attack: Attack, tmp_path: Path,
                                           capsys) -> None:
    change, key = EXPORT_PAYLOADS[name]
    edit_export(crafted, lambda info: change(info, attack))
    if entry == "tunelab-predict":
        assert predict_cli(crafted, tmp_path) == 1
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1
    else:
        with pytest.raises(TunelabError) as refused:
            load_run_model(crafted)
        message = str(refused.value)
    assert f"{crafted / 'model' / 'tunelab.json'}: {key}" in message
    assert not attack.ran()


def test_a_crafted_distillation_teacher_is_refused(crafted: Path, attack: Attack, tiny_bert: Path, learnable_csv: Path,
                                                   tmp_path: Path) -> None:
    change, key = EXPORT_PAYLOADS["peft config"]
    edit_export(crafted, lambda info: change(info, attack))
    cfg = compose_train(tmp_path / "student", *tiny_overrides(tiny_bert, learnable_csv, "tuning=distill",
                                                              f"tuning.teacher={crafted}"))
    with pytest.raises(TunelabError, match=f"tunelab.json: {key}"):
        run(cfg)
    assert not attack.ran()


# name -> (key in config.yaml, value, the key the refusal names)
CONFIG_PAYLOADS = {
    "data source": ("task.data.source", "unpickle", "task.data.source._target_ = 'torch.load'"),
    "task module": ("task.module._target_", "tunelab.tasks.base.torch.load", "task.module._target_"),
    "optimizer": ("optimizer", "unpickle", "optimizer._target_ = 'torch.load'"),
    "interpolation": ("task.data.text_column", "${tunelab_payload:}", "task.data.text_column = '${tunelab_payload:}'"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_PAYLOADS))
def test_a_crafted_config_yaml_is_refused_by_predict(name: str, crafted: Path, attack: Attack, tmp_path: Path,
                                                     capsys) -> None:
    """Old: predicted as if nothing were wrong (the interpolation ran its resolver)."""
    key, value, named = CONFIG_PAYLOADS[name]
    cfg = OmegaConf.load(crafted / "config.yaml")
    OmegaConf.update(cfg, key, attack.unpickle if value == "unpickle" else value, merge=False)
    OmegaConf.save(cfg, crafted / "config.yaml")
    assert predict_cli(crafted, tmp_path) == 1
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and f"{crafted / 'config.yaml'}: {named}" in message
    assert not attack.ran()


def _checkpoint_with(finished: Path, dest: Path, change: Callable[[dict], None]) -> Path:
    checkpoint = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, dest)
    return dest


def test_resuming_from_a_checkpoint_with_a_pickle_payload_is_refused(
        finished_run: tuple[Path, dict], attack: Attack, tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On torch < 2.6 Lightning's ``weights_only=None`` unpickles anything; the environment variable makes
    torch 2.6+ do the same where the caller leaves ``weights_only`` unset."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    finished = finished_run[0]
    bad = _checkpoint_with(finished, tmp_path / "bad.ckpt", lambda c: c.update(payload=Payload(attack.marker)))
    assert "state_dict" in AtomicCheckpointIO().load_checkpoint(finished / "checkpoints" / "last.ckpt")
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, f"ckpt_path={bad}"))
    refusal = rf"{re.escape(str(bad))}: refused to load this checkpoint: .*GLOBAL tests.test_trusted.touch"
    with pytest.raises(TunelabError, match=refusal):
        run(cfg)
    assert not attack.ran()


def test_load_from_checkpoint_reads_the_checkpoint_as_data(finished_run: tuple[Path, dict], attack: Attack,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old: the checkpoint's hyperparameters were instantiated as they were, and its pickles unpickled."""
    finished = finished_run[0]
    crafted_hparams = _checkpoint_with(finished, tmp_path / "hparams.ckpt",
                                       lambda c: c["hyper_parameters"].update(tuning=attack.unpickle))
    with pytest.raises(TunelabError, match=r"hparams.ckpt: hyper_parameters.tuning._target_ = 'torch.load'"):
        SequenceClassificationModule.load_from_checkpoint(crafted_hparams)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    pickled = _checkpoint_with(finished, tmp_path / "pickled.ckpt", lambda c: c.update(payload=Payload(attack.marker)))
    with pytest.raises(pickle.UnpicklingError):
        SequenceClassificationModule.load_from_checkpoint(pickled)
    assert not attack.ran()
    assert SequenceClassificationModule.load_from_checkpoint(finished / "checkpoints" / "last.ckpt").labels
