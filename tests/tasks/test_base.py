"""Optimizer parameter groups and learning-rate schedules of every task module."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.tasks import SequenceClassificationModule


def module(tiny_bert: Path, optimizer: dict, scheduler: dict) -> SequenceClassificationModule:
    m = SequenceClassificationModule(labels=["a", "b"], model={"name_or_path": str(tiny_bert)},
                                     optimizer=optimizer, scheduler=scheduler)
    m._trainer = SimpleNamespace(estimated_stepping_batches=100)
    return m


def test_adamw_excludes_biases_and_layernorm_from_weight_decay(tiny_bert: Path) -> None:
    m = module(tiny_bert, {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}, {"name": "linear"})
    optimizer = m.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in m.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "bert.embeddings.word_embeddings.weight" in decayed and "classifier.weight" in decayed
    assert "bert.embeddings.LayerNorm.weight" in skipped and "classifier.bias" in skipped
    assert all(n.endswith("bias") or "LayerNorm" in n for n in skipped)
    assert len(decayed) + len(skipped) == len(names)


@pytest.mark.parametrize(
    "scheduler,expected",  # lr (x base) after 0, 10, 55 and 100 steps
    [
        ({"name": "linear", "warmup_ratio": 0.1}, [0.0, 1.0, 0.5, 0.0]),
        ({"name": "cosine", "warmup_steps": 10}, [0.0, 1.0, 0.5, 0.0]),
        ({"name": "constant_with_warmup", "warmup_ratio": 0.0}, [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedules(tiny_bert: Path, scheduler: dict, expected: list[float]) -> None:
    m = module(tiny_bert, {"_target_": "torch.optim.SGD", "lr": 0.1}, scheduler)
    config = m.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for step in range(101):
        if step in (0, 10, 55, 100):
            seen.append(optimizer.param_groups[0]["lr"] / 0.1)
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx(expected, abs=1e-6)
