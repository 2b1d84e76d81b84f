"""``model.gradient_checkpointing=true``: blocks recompute their activations in the backward pass, and one
training step gives the loss and the gradients of a run without it, for every method that allows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import tiny_overrides
from tests.decoder_fixtures import build_tiny_decoder, tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.lm_fixtures import lm_overrides, lm_text  # noqa: F401
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule, build_module, run
from tunelab.tuning.parts import find_blocks

pytestmark = pytest.mark.usefixtures("one_thread")

NO_DROPOUT = ["tuning.peft.lora_dropout=0"]
BERT_NO_DROPOUT = ["+model.config_overrides.hidden_dropout_prob=0", "+model.config_overrides.attention_probs_dropout_prob=0"]
# (model, method): Qwen2 for BitFit on a decoder, as Llama's linear layers have no biases
CASES = [
    *[("llama", m) for m in ("full", "freeze", "lora", "ia3", "prompt", "ptuning", "adapter")],
    ("qwen2", "bitfit"),
    *[("bert", m) for m in ("full", "freeze", "lora", "ia3", "prompt", "ptuning", "adapter", "bitfit")],
]


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


def overrides(model: str, method: str, paths: dict[str, Path]) -> list[str]:
    extra = [f"tuning={method}", *(["tuning.n_blocks=1"] if method == "freeze" else [])]
    extra += NO_DROPOUT if method == "lora" else []
    if model == "bert":
        return tiny_overrides(paths["bert"], paths["csv"], *extra, *BERT_NO_DROPOUT)
    return lm_overrides(paths[model], paths["text"], "clm", "model.architecture=decoder", *extra)


def one_step(cfg, datamodule, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss, gradients of the trainable parameters, and how often the first block's first linear layer ran."""
    torch.manual_seed(0)  # the same new weights (head, adapters, virtual tokens) in both builds
    module = build_module(cfg, datamodule)
    module.train()
    _, block = find_blocks(module.model)[0]
    linear = next(m for m in block.modules() if isinstance(m, nn.Linear))
    calls = []
    linear.register_forward_hook(lambda *_: calls.append(1))
    loss = module.loss(module(batch), batch)
    loss.backward()
    grads = {n: p.grad for n, p in module.model.named_parameters() if p.requires_grad}
    return loss.item(), grads, len(calls)


@pytest.mark.parametrize(("model", "method"), CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_checkpointing_gives_the_same_step(model: str, method: str, tiny_llama: Path, tiny_qwen2: Path,  # noqa: F811
                                           tiny_bert: Path, learnable_csv: Path, lm_text: Path,  # noqa: F811
                                           tmp_path: Path) -> None:
    paths = {"llama": tiny_llama, "qwen2": tiny_qwen2, "bert": tiny_bert, "csv": learnable_csv, "text": lm_text}
    plain = compose_train(tmp_path / "run", *overrides(model, method, paths))
    checkpointed = compose_train(tmp_path / "run", *overrides(model, method, paths), "model.gradient_checkpointing=true")
    datamodule = build_datamodule(plain, load_tokenizer(plain.model))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))

    loss, grads, calls = one_step(plain, datamodule, batch)
    loss_ckpt, grads_ckpt, calls_ckpt = one_step(checkpointed, datamodule, batch)
    assert (calls, calls_ckpt) == (1, 2)  # the block ran again in the backward pass
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads and grads.keys() == grads_ckpt.keys()
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    for name, grad in grads.items():
        assert grads_ckpt[name] is not None, name  # checkpointing cut no parameter off the graph
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=1e-6, msg=name)


def test_prefix_tuning_with_checkpointing_stops_at_start_up(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, "tuning=prefix",
                                                          "model.gradient_checkpointing=true"))
    with pytest.raises(ConfigError, match=r"tuning=prefix does not work with model.gradient_checkpointing=true.*"
                                          r"set model.gradient_checkpointing=false, or use tuning=prompt"):
        run(cfg)
    assert not (tmp_path / "run").exists()


def test_fsdp_checkpointing_is_not_asked_for_twice(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", *tiny_overrides(
        tiny_bert, learnable_csv, "trainer=fsdp", "trainer.strategy.activation_checkpointing=true",
        "model.gradient_checkpointing=true"))
    with pytest.raises(ConfigError, match=r"model.gradient_checkpointing=true and trainer.strategy."
                                          r"activation_checkpointing=true would both checkpoint"):
        run(cfg)


def test_gradient_checkpointing_must_be_a_boolean(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, "model.gradient_checkpointing=yes"))
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    with pytest.raises(ConfigError, match=r"model\.gradient_checkpointing must be true or false, got 'yes'"):
        build_module(cfg, datamodule)
