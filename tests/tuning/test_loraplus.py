"""LoRA+: B matrices at lr_ratio x the rate of A, through the run's own optimizer; refused with LLRD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab.errors import ConfigError
from tunelab.train import build_datamodule, build_module


def configured(tmp_path: Path, tiny_bert: Path, data: Path, *overrides: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from tunelab.models import load_tokenizer

    cfg = compose_train(tmp_path, *tiny_overrides(tiny_bert, data, "tuning=loraplus", "trainer.max_epochs=1", *overrides))
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    module = build_module(cfg, dm)  # the optimizer as configure_optimizers builds it
    return module.model, module.tuning.optimizer(module.optimizer_cfg, module.model)


def test_loraplus_trains_b_at_ratio_times_the_rate_of_a(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    model, optimizer = configured(tmp_path, tiny_bert, learnable_csv, "optimizer.lr=1e-3", "tuning.lr_ratio=8")
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(rates) == {id(p) for p in trainable.values()}  # every trainable parameter, once
    by_kind = {}
    for name, p in trainable.items():
        kind = "A" if "lora_A" in name else "B" if "lora_B" in name else "1-d" if p.ndim == 1 else "other"
        by_kind.setdefault(kind, set()).add(rates[id(p)])
    assert by_kind == {"A": {1e-3}, "B": {8e-3}, "1-d": {8e-3}, "other": {1e-3}}  # other: the head's weight
    assert optimizer.defaults["fused"] is True  # optimizer.fused=auto still applies


def test_loraplus_refuses_layer_decay_and_a_ratio_below_one(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer.layer_decay does not combine with tuning=loraplus"):
        configured(tmp_path, tiny_bert, learnable_csv, "optimizer.layer_decay=0.8")
    with pytest.raises(ConfigError, match=r"tuning.lr_ratio \(LoRA\+'s lr_B / lr_A\) must be a number >= 1, got 0.5"):
        configured(tmp_path, tiny_bert, learnable_csv, "tuning.lr_ratio=0.5")
