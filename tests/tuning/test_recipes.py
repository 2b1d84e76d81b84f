"""Recipes that combine with any method: L2-SP (tuning.l2sp) and gradual unfreezing (tuning.unfreeze)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab.config_checks import check_config
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule, build_module, build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def build(tmp_path: Path, tiny_bert: Path, data: Path, *overrides: str):
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, data, *overrides))
    check_config(cfg)
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    return cfg, dm, build_module(cfg, dm)


class Snapshots(L.Callback):
    """The model's state at the end of every training epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.model.state_dict().items()})


def test_l2sp_adds_its_gradient_to_the_trained_weights_but_the_head(tiny_bert: Path, learnable_csv: Path,
                                                                     tmp_path: Path) -> None:
    _, dm, module = build(tmp_path, tiny_bert, learnable_csv, "tuning.l2sp=0.5")
    pretrained = load_file(tiny_bert / "model.safetensors")
    with torch.no_grad():  # move every weight away from where it started
        for param in module.model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    # independent of the recipe's bookkeeping: the distance from the checkpoint's weights, head left out
    params = dict(module.model.named_parameters())
    expected = 0.25 * sum(((p - pretrained[n]) ** 2).sum() for n, p in params.items() if not n.startswith("classifier."))
    torch.testing.assert_close(module.recipes.penalty(module.model), expected.detach())
    batch = next(iter(dm.train_dataloader()))
    module.eval()
    module.loss(module(batch), batch).backward()
    task_grads = {n: p.grad.clone() for n, p in params.items()}

    class Trainer:  # what the hook reads of Lightning's trainer
        current_epoch, global_step = 0, 0

    logged = module.recipes.before_optimizer_step(module.model, Trainer())
    assert logged["train/l2sp"] == pytest.approx(expected.item(), rel=1e-5)
    for name, param in params.items():  # the gradient of alpha / 2 * ||w - w_0||^2 is alpha * (w - w_0)
        pull = 0 if name.startswith("classifier.") else 0.5 * (param.detach() - pretrained[name])
        torch.testing.assert_close(param.grad, task_grads[name] + pull, msg=name)
    assert not any(k.startswith("recipes") for k in module.state_dict())  # rebuilt on resume, never checkpointed


def test_l2sp_keeps_training_near_the_start_and_combines_with_lora(tiny_bert: Path, learnable_csv: Path,
                                                                   tmp_path: Path) -> None:
    distance = {}
    for alpha in ("null", "100"):
        cfg, dm, module = build(tmp_path / alpha, tiny_bert, learnable_csv, "trainer.max_epochs=2", f"tuning.l2sp={alpha}")
        start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
        build_trainer(cfg, []).fit(module, datamodule=dm)
        distance[alpha] = sum(((p - start[n]) ** 2).sum().item() for n, p in module.model.named_parameters()
                              if not n.startswith("classifier."))
    assert distance["100"] < 0.5 * distance["null"], distance
    cfg, dm, module = build(tmp_path / "lora", tiny_bert, learnable_csv, "tuning=lora", "tuning.l2sp=0.1",
                            "trainer.max_epochs=1")
    lora_b = [n for n, p in module.model.named_parameters() if "lora_B" in n]
    assert set(module.recipes._start) >= set(lora_b) and not any("classifier" in n for n in module.recipes._start)
    build_trainer(cfg, []).fit(module, datamodule=dm)
    assert module.trainer.logged_metrics["train/l2sp"] > 0


def test_gradual_unfreezing_trains_one_block_more_per_epoch(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg, dm, module = build(tmp_path, tiny_bert, learnable_csv, "tuning.unfreeze=epoch", "trainer.max_epochs=4")
    start = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    snapshots = Snapshots()
    build_trainer(cfg, [snapshots]).fit(module, datamodule=dm)

    def changed(epoch: int, prefix: str) -> bool:
        before = start if epoch == 0 else snapshots.states[epoch - 1]
        return any(not torch.equal(v, before[k]) for k, v in snapshots.states[epoch].items() if k.startswith(prefix))

    # epoch 0: the head (and the pooler after the last block); 1: + block 1; 2: + block 0; 3: + the embeddings
    expected = {0: ("classifier", "bert.pooler"), 1: ("bert.encoder.layer.1",), 2: ("bert.encoder.layer.0",),
                3: ("bert.embeddings",)}
    for epoch in range(4):
        trained = {p for e in range(epoch + 1) for p in expected[e]}
        for prefix in ("classifier", "bert.pooler", "bert.encoder.layer.1", "bert.encoder.layer.0", "bert.embeddings"):
            assert changed(epoch, prefix) == (prefix in trained), (epoch, prefix)
    assert module.trainer.logged_metrics["train/unfrozen_depth"] == 3


def test_unfreezing_by_steps_with_lora(tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    cfg, dm, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=lora", "tuning.unfreeze=2", "trainer.max_steps=3",
                            "trainer.max_epochs=-1", "task.data.batch_size=32", "trainer.limit_val_batches=0")
    start = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    with caplog.at_level("WARNING"):
        build_trainer(cfg, []).fit(module, datamodule=dm)
    assert "reaches depth 1 of 3: the lowest 2 levels (the embeddings at 3) never train" in caplog.text
    moved = {n for n, p in module.model.named_parameters() if p.requires_grad and not torch.equal(p, start[n])}
    # steps 0, 1: the head; step 2: also the top block's LoRA (B first: A's gradient is zero while B is)
    assert any("classifier" in n for n in moved) and any("layer.1." in n and "lora_B" in n for n in moved)
    assert not any("layer.0." in n for n in moved), moved


@pytest.mark.parametrize("override,message", [
    ("tuning.l2sp=-1", r"tuning.l2sp must be null \(off\) or a number >= 0"),
    ("tuning.unfreeze=0", r"tuning.unfreeze must be null \(off\), epoch .* got 0"),
    ("tuning.unfreeze=weekly", r"tuning.unfreeze must be null \(off\), epoch .* got 'weekly'"),
])
def test_bad_recipe_values_are_refused_at_start(override: str, message: str, tiny_bert: Path, learnable_csv: Path,
                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, tiny_bert, learnable_csv, override)


def test_l2sp_refuses_a_method_that_trains_only_the_head(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tuning.l2sp is set, but the method trains nothing outside the task head"):
        build(tmp_path, tiny_bert, learnable_csv, "tuning=head-only", "tuning.l2sp=0.1")


def test_unfreezing_refuses_adalora(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tuning.unfreeze does not combine with tuning=adalora"):
        build(tmp_path, tiny_bert, learnable_csv, "tuning=adalora", "tuning.unfreeze=epoch")
