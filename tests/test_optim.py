"""The optimizer of a run: weight-decay groups and torch's fused kernels (``optimizer.fused``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab.config_checks import check_config
from tunelab.errors import ConfigError
from tunelab.optim import build_optimizer, fused_setting
from tunelab.tasks import SequenceClassificationModule

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = [
    {"_target_": "torch.optim.AdamW", "lr": 1e-2, "weight_decay": 0.01},
    {"_target_": "torch.optim.Adam", "lr": 1e-2, "weight_decay": 0.01},
    {"_target_": "torch.optim.SGD", "lr": 1e-1, "momentum": 0.9, "weight_decay": 0.01},
]


def _model(tiny_bert: Path) -> torch.nn.Module:
    module = SequenceClassificationModule(labels=["a", "b"], model={"name_or_path": str(tiny_bert)},
                                          optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3})
    return module.model.eval()  # no dropout: the two models see the same forward pass


@pytest.mark.parametrize("cfg", OPTIMIZERS, ids=lambda c: c["_target_"].rsplit(".", 1)[1])
def test_a_fused_step_equals_the_unfused_one(cfg: dict, tiny_bert: Path) -> None:
    models = {fused: _model(tiny_bert) for fused in (True, False)}
    models[False].load_state_dict(models[True].state_dict())
    optimizers = {fused: build_optimizer({**cfg, "fused": fused}, model) for fused, model in models.items()}
    assert optimizers[True].defaults["fused"] is True and not optimizers[False].defaults.get("fused")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # the gradients of the fused model's weights, given to both: only the kernels differ
        ids = torch.randint(4, 60, (8, 12), generator=generator)
        labels = torch.randint(0, 2, (8,), generator=generator)
        models[True](input_ids=ids, labels=labels).loss.backward()
        for a, b in zip(models[True].parameters(), models[False].parameters(), strict=True):
            b.grad = a.grad.clone()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad()
    moved = 0
    start = _model(tiny_bert).state_dict()
    for (name, a), (_, b) in zip(models[True].state_dict().items(), models[False].state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
        moved += not torch.equal(a, start[name])
    assert moved > 0.9 * len(start)  # the steps did update the weights


def test_auto_fuses_where_torch_has_a_kernel_and_lightning_allows_it() -> None:
    params = [torch.nn.Parameter(torch.ones(2))]
    assert fused_setting({"_target_": "torch.optim.AdamW", "fused": "auto"}, params, False) is True
    assert fused_setting({"_target_": "torch.optim.SGD", "fused": "auto"}, params, False) is True
    # RMSprop has no fused kernel; an explicit foreach wins; Lightning refuses clipping a fused optimizer under AMP
    assert fused_setting({"_target_": "torch.optim.RMSprop", "fused": "auto"}, params, False) is None
    assert fused_setting({"_target_": "torch.optim.AdamW", "fused": "auto", "foreach": True}, params, False) is None
    assert fused_setting({"_target_": "torch.optim.AdamW", "fused": "auto"}, params, True) is None
    assert fused_setting({"_target_": "torch.optim.AdamW"}, params, False) is None  # a config without the key
    with pytest.raises(ConfigError, match="RMSprop has no fused kernel"):
        fused_setting({"_target_": "torch.optim.RMSprop", "fused": True}, params, False)
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        fused_setting({"_target_": "torch.optim.AdamW", "fused": True}, params, True)


def test_presets_fuse_and_a_bad_value_is_refused_at_start(tmp_path: Path) -> None:
    for name in ("adamw", "adam", "sgd"):
        assert compose_train(tmp_path, f"optimizer={name}").optimizer.fused == "auto"
    with pytest.raises(ConfigError, match=r"optimizer\.fused must be auto, true or false, got 'yes'"):
        check_config(compose_train(tmp_path, "optimizer.fused=yes"))


def _train(tiny_bert: Path, learnable_csv: Path, out: Path, *extra: str) -> dict:
    from tunelab.train import run

    return run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=1", *extra)))


def test_training_with_the_fused_kernel_reports_what_the_unfused_one_does(tiny_bert: Path, learnable_csv: Path,
                                                                          tmp_path: Path) -> None:
    fused = _train(tiny_bert, learnable_csv, tmp_path / "fused", "optimizer.fused=true")
    plain = _train(tiny_bert, learnable_csv, tmp_path / "plain", "optimizer.fused=false")
    assert fused["test"]["loss"] == pytest.approx(plain["test"]["loss"], abs=1e-4)
    assert fused["test"]["accuracy"] == plain["test"]["accuracy"]


def test_mixed_precision_with_clipping_trains_with_auto_and_stops_at_true(tiny_bert: Path, learnable_csv: Path,
                                                                           tmp_path: Path) -> None:
    bf16 = ("trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0", "trainer.max_steps=3")
    metrics = _train(tiny_bert, learnable_csv, tmp_path / "auto", *bf16)
    assert metrics["test"]["loss"] > 0
    with pytest.raises(ConfigError, match="Lightning refuses to clip the gradients of a fused optimizer"):
        _train(tiny_bert, learnable_csv, tmp_path / "true", *bf16, "optimizer.fused=true")

