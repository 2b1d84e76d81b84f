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



def _rates(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def _expected_llrd_depth(name: str, n_blocks: int) -> int:
    """Depth from the top, written out for BERT's names: the head 0, layer.i n_blocks - i, embeddings n_blocks + 1."""
    if ".embeddings." in f".{name}":
        return n_blocks + 1
    for i in range(n_blocks):
        if f"encoder.layer.{i}." in name:
            return n_blocks - i
    assert name.startswith(("bert.pooler", "classifier", "base_model.model.classifier", "base_model.model.bert.pooler")), name
    return 0


def test_layer_decay_gives_each_block_its_rate_from_the_top(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    cfg = {"_target_": "torch.optim.AdamW", "lr": 1e-2, "weight_decay": 0.01, "layer_decay": 0.5, "fused": "auto"}
    optimizer = build_optimizer(cfg, model)
    rates = _rates(optimizer, model)
    assert set(rates) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, lr in rates.items():
        assert lr == pytest.approx(1e-2 * 0.5 ** _expected_llrd_depth(name, 2)), name
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert decay[id(params["bert.encoder.layer.0.attention.self.query.bias"])] == 0.0  # biases and norms: no decay
    assert decay[id(params["bert.encoder.layer.0.attention.output.LayerNorm.weight"])] == 0.0
    assert decay[id(params["bert.encoder.layer.0.attention.self.query.weight"])] == 0.01
    assert optimizer.defaults["fused"] is True


def test_layer_decay_on_a_peft_model_and_an_encoder_decoder(tiny_bert: Path) -> None:
    from peft import LoraConfig
    from transformers import T5Config, T5ForConditionalGeneration

    from tunelab.tuning import Peft

    lora = Peft(LoraConfig(r=2), name="lora").apply(_model(tiny_bert))
    rates = _rates(build_optimizer({"_target_": "torch.optim.AdamW", "lr": 1.0, "layer_decay": 0.5}, lora), lora)
    assert {n.split(".lora_")[0].rsplit(".", 1)[0]: r for n, r in rates.items() if "lora_" in n} == {
        "base_model.model.bert.encoder.layer.0.attention.self": 0.25, "base_model.model.bert.encoder.layer.1.attention.self": 0.5}
    assert {r for n, r in rates.items() if "classifier" in n} == {1.0}  # the head (peft's modules_to_save copy)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=3,
                                             num_heads=2, decoder_start_token_id=0))
    rates = _rates(build_optimizer({"_target_": "torch.optim.AdamW", "lr": 1.0, "layer_decay": 0.5}, t5), t5)
    # 5 blocks: encoder 0, 1 lowest, decoder 2 on top; the shared embeddings lowest; the encoder's final norm
    # sits with the block below it, the decoder's after the last block at the full rate
    assert rates["encoder.block.0.layer.0.SelfAttention.q.weight"] == 0.5 ** 5
    assert rates["encoder.block.1.layer.1.DenseReluDense.wi.weight"] == 0.5 ** 4
    assert rates["decoder.block.0.layer.0.SelfAttention.q.weight"] == 0.5 ** 3
    assert rates["decoder.block.2.layer.2.DenseReluDense.wo.weight"] == 0.5
    assert rates["shared.weight"] == 0.5 ** 6
    assert rates["encoder.final_layer_norm.weight"] == 0.5 ** 4
    assert rates["decoder.final_layer_norm.weight"] == 1.0


def test_layer_decay_refuses_bad_values_and_models_without_blocks(tmp_path: Path) -> None:
    for bad in ("0", "1.5", "yes"):
        with pytest.raises(ConfigError, match=r"optimizer.layer_decay must be null \(off\) or a number in \(0, 1\]"):
            check_config(compose_train(tmp_path, f"optimizer.layer_decay={bad}"))
    check_config(compose_train(tmp_path, "optimizer.layer_decay=0.8"))
    with pytest.raises(ConfigError, match=r"optimizer.layer_decay: could not find the transformer blocks of Linear"):
        build_optimizer({"_target_": "torch.optim.SGD", "lr": 0.1, "layer_decay": 0.9}, torch.nn.Linear(2, 2))


def test_a_run_with_layer_decay_trains(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """Runs without and with LLRD (0.3) from the same start: both learn; the embeddings moved far less under LLRD."""
    from safetensors.torch import load_file

    from tunelab.exported import load_run_model

    runs = {d: _train(tiny_bert, learnable_csv, tmp_path / d, "trainer.max_epochs=4", f"optimizer.layer_decay={d}")
            for d in ("null", "0.3")}
    for metrics in runs.values():
        assert metrics["test"]["accuracy"] > 0.6, {d: m["test"] for d, m in runs.items()}
    original = load_file(tiny_bert / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    moved = {d: (load_run_model(tmp_path / d).state_dict()[key] - original[key]).norm().item() for d in runs}
    assert moved["0.3"] < 0.2 * moved["null"], moved
