"""The default trainer uses the hardware that is there; hardware configs change only hardware keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_train
from tunelab import hardware
from tunelab.config import CONFIG_DIR

# What a hardware config may set: everything else is the recipe, the same on every machine.
HARDWARE_KEYS = {"accelerator", "devices", "num_nodes", "precision", "strategy", "deterministic", "benchmark",
                 "use_distributed_sampler"}


def test_default_trainer_is_auto_and_resolves_to_fp32_on_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_train(tmp_path)
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.precision == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO"):
        assert hardware.hardware_overrides(cfg.trainer) == {"accelerator": "cpu", "precision": "32-true"}
    assert "hardware: accelerator cpu (CPU), precision 32-true" in caplog.text


def test_auto_on_a_gpu_machine_is_gpu_with_bf16_where_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert hardware.hardware_overrides({"accelerator": "auto", "precision": "auto"}) == {
        "accelerator": "gpu", "precision": "bf16-mixed"}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100
    assert hardware.resolve_precision("auto", "gpu") == "32-true"
    assert hardware.resolve_precision("auto", "cpu") == "32-true"
    assert hardware.resolve_precision("16-mixed", "gpu") == "16-mixed"  # an explicit choice stays


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml") if p.stem != "default"))
def test_hardware_configs_keep_the_recipe(name: str, tmp_path: Path) -> None:
    """Moving a run to other hardware (trainer=gpu, ddp, ...) changes no recipe key, e.g. max_epochs."""
    default = OmegaConf.to_container(compose_train(tmp_path).trainer, resolve=False)
    other = OmegaConf.to_container(compose_train(tmp_path, f"trainer={name}").trainer, resolve=False)
    changed = {k for k in default.keys() | other.keys() if default.get(k) != other.get(k)}
    assert changed <= HARDWARE_KEYS, f"trainer={name} changes recipe keys {sorted(changed - HARDWARE_KEYS)}"
