"""Every tuning method on a tiny BERT: it learns, frozen weights stay bit-identical, the counts
are right, the optimizer sees only trainable parameters, and the export reloads to the same
predictions."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.exported import load_run_model
from tunelab.models import load_tokenizer
from tunelab.tasks import SequenceClassificationModule
from tunelab.train import build_datamodule, build_module, build_trainer
from tunelab.tuning import Peft

# Every preset of configs/tuning is tested, but distill (needs a teacher: its own tests below) and qlora (CUDA only:
# tests/tuning/test_qlora.py). The tiny BERT's rate and epochs: DEFAULT unless TINY says otherwise.
SKIP = {"distill", "qlora"}
METHODS = sorted(p.stem for p in (CONFIG_DIR / "tuning").glob("*.yaml") if p.stem not in SKIP)
DEFAULT = (1e-2, 3)
TINY = {
    "full": (1e-3, 3),
    "freeze": (1e-3, 3),
    "lora": (5e-3, 3),
    "loraplus": (1e-3, 3),
    "dora": (5e-3, 3),
    "rslora": (3e-3, 3),
    "pissa": (1e-3, 3),
    "olora": (3e-3, 3),
    "adalora": (1e-2, 4),
    "adapter": (5e-3, 3),
    "oft": (5e-3, 3),
    "boft": (1e-2, 4),
}
MIN_ACCURACY = {}  # method -> validation accuracy it must reach where 0.6 (chance: 1/3) is out of its reach


def mergeable(method: str) -> bool:
    """The preset has ``merge_on_export`` (peft can merge the method into the base weights)."""
    return "merge_on_export" in OmegaConf.load(CONFIG_DIR / "tuning" / f"{method}.yaml")


def build(tmp_path: Path, tiny_bert: Path, data: Path, *overrides: str):
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, data, *overrides))
    L.seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("fit")
    return cfg, tokenizer, dm, build_module(cfg, dm)


def predict_logits(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method(method: str, tiny_pretrained: Path, learnable_csv: Path, tmp_path: Path) -> None:
    """Starts from a backbone with useful features and a new random head, as with a real checkpoint."""
    lr, epochs = TINY.get(method, DEFAULT)
    extra = ["tuning.n_blocks=1"] if method == "freeze" else []
    if mergeable(method):
        extra.append("tuning.merge_on_export=true")
    cfg, tokenizer, dm, module = build(tmp_path, tiny_pretrained, learnable_csv, f"tuning={method}", f"optimizer.lr={lr}",
                                       f"trainer.max_epochs={epochs}", "scheduler=linear", *extra)
    params = dict(module.model.named_parameters())
    frozen = {n: p.detach().clone() for n, p in params.items() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    counts = module.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in trainable.values()) > 0
    assert counts["total"] == sum(p.numel() for p in params.values())
    if method != "full":
        assert frozen and counts["trainable_pct"] < 100

    trainer = build_trainer(cfg, [])
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]

    # the optimizer was given exactly the trainable parameters
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.model.parameters() if p.requires_grad}
    # it learned: validation loss fell and accuracy beats chance (1/3)
    assert after["val/loss"] < before["val/loss"]
    assert after["val/accuracy"] > MIN_ACCURACY.get(method, 0.6), (before, after)
    # frozen parameters are bit-identical, trainable ones moved
    current = dict(module.model.named_parameters())
    for name, tensor in frozen.items():
        assert torch.equal(current[name], tensor), name
    assert any(not torch.equal(current[n], t) for n, t in trainable.items())

    # export -> reload (through the run folder's loader) predicts the same
    export = tmp_path / "run" / "model"
    module.save_pretrained(export, tokenizer)
    (tmp_path / "run" / "config.yaml").write_text("exported: true\n")
    texts = make_rows(16, seed=5)["text"].tolist()
    expected = predict_logits(module.model, tokenizer, texts)
    torch.testing.assert_close(predict_logits(load_run_model(tmp_path / "run"), tokenizer, texts), expected)
    if isinstance(module.tuning, Peft):  # plain peft reload on the untouched base: the trained head comes back too
        base = AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3)
        torch.testing.assert_close(predict_logits(PeftModel.from_pretrained(base, export), tokenizer, texts), expected)
    if method in ("pissa", "olora"):  # exported as plain LoRA (rank 2r) for the untouched base: no SVD / QR at load
        adapter = json.loads((export / "adapter_config.json").read_text())
        assert adapter["init_lora_weights"] is True and adapter["r"] == 2 * cfg.tuning.peft.r
    if mergeable(method):  # the merged model loads without peft and predicts as the adapter does
        merged = AutoModelForSequenceClassification.from_pretrained(export / "merged")
        torch.testing.assert_close(predict_logits(merged, tokenizer, texts), expected, atol=1e-5, rtol=1e-4)
    if method == "full":
        plain = AutoModelForSequenceClassification.from_pretrained(export)
        torch.testing.assert_close(predict_logits(plain, tokenizer, texts), expected)


def test_lora_counts_and_merged_export(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    _, tokenizer, _, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=lora", "tuning.merge_on_export=true",
                                    "tuning.peft.r=4")
    # r x (in + out) for query and value in 2 layers (hidden 32) + the trained head copy (32 x 3 + 3)
    assert module.parameter_counts()["trainable"] == 2 * 2 * 4 * (32 + 32) + 32 * 3 + 3
    with torch.no_grad():  # make the adapter non-trivial before merging
        for n, p in module.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    module.save_pretrained(tmp_path / "export", tokenizer)
    texts = make_rows(8, seed=1)["text"].tolist()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export" / "merged")
    torch.testing.assert_close(predict_logits(merged, tokenizer, texts), predict_logits(module.model, tokenizer, texts),
                               atol=1e-5, rtol=1e-4)


def test_bitfit_trains_only_biases_and_head(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    _, _, _, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=bitfit")
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert all(n.endswith("bias") or n.startswith("classifier.") for n in trainable)
    assert "classifier.weight" in trainable and "bert.encoder.layer.0.attention.self.query.bias" in trainable


def test_freeze_counts_blocks_from_the_bottom_or_the_top(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    _, _, _, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=freeze", "tuning.n_blocks=-1")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in trainable)
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable) and "classifier.weight" in trainable
    with pytest.raises(ConfigError, match=r"tuning.n_blocks=3, but BertForSequenceClassification has 2 transformer blocks"):
        build(tmp_path, tiny_bert, learnable_csv, "tuning=freeze", "tuning.n_blocks=3")


def test_distill_into_lora_student_from_a_teacher_run(finished_run, tiny_pretrained: Path, learnable_csv: Path,
                                                      tmp_path: Path) -> None:
    teacher_dir, _ = finished_run
    cfg, _, dm, module = build(tmp_path, tiny_pretrained, learnable_csv, "tuning=distill", f"tuning.teacher={teacher_dir}",
                               "tuning/student=lora", "optimizer.lr=5e-3", "trainer.max_epochs=3")
    assert module.tuning.name == "distill-lora" and module.parameter_counts()["trainable_pct"] < 30
    teacher = module.tuning_modules["teacher"]
    teacher_before = {n: p.clone() for n, p in teacher.named_parameters()}
    module.train()
    assert not teacher.training and not teacher.model.training  # stays in eval mode
    trainer = build_trainer(cfg, [])
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert after["val/accuracy"] > 0.6
    assert all(torch.equal(p, teacher_before[n]) for n, p in teacher.named_parameters())

    batch = next(iter(dm.train_dataloader()))
    outputs = module(batch)
    from tunelab.tuning.distill import distillation_loss

    expected = 0.5 * outputs.loss + 0.5 * distillation_loss(outputs.logits, teacher(batch), 2.0)
    torch.testing.assert_close(module.loss(outputs, batch), expected)


def test_distill_rejects_teacher_with_other_labels(finished_run, tiny_bert: Path, tmp_path: Path) -> None:
    teacher_dir, _ = finished_run
    data = tmp_path / "two.csv"
    rows = make_rows(60)
    rows["label"] = rows["label"].replace({"gamma": "beta"})
    rows.to_csv(data, index=False)
    with pytest.raises(ConfigError, match="same labels"):
        build(tmp_path, tiny_bert, data, "tuning=distill", f"tuning.teacher={teacher_dir}")


def test_reloaded_checkpoint_of_a_peft_run_predicts_the_same(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    from tunelab.train import run

    out = tmp_path / "lora-run"
    run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, "tuning=lora", "trainer.max_epochs=2")))
    module = SequenceClassificationModule.load_from_checkpoint(out / "checkpoints" / "best.ckpt")
    tokenizer = load_tokenizer({"name_or_path": str(out / "model")})
    texts = make_rows(8, seed=2)["text"].tolist()
    torch.testing.assert_close(predict_logits(module.model, tokenizer, texts),
                               predict_logits(load_run_model(out), tokenizer, texts))


def test_unsupported_peft_pairing_fails_at_start_up_with_one_message() -> None:
    from peft import PrefixTuningConfig
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from tunelab.tuning import Peft

    model = DebertaV2ForSequenceClassification(DebertaV2Config(vocab_size=99, hidden_size=16, num_hidden_layers=2,
                                                               num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ConfigError, match=r"tuning=prefix \(PrefixTuningConfig\) does not work with "
                                          r"DebertaV2ForSequenceClassification .*past key values.*tuning=prompt"):
        Peft(PrefixTuningConfig(num_virtual_tokens=4), name="prefix").apply(model)


@pytest.mark.parametrize("config", ["lora", "ia3", "prompt", "prefix"])
def test_peft_methods_fill_in_what_distilbert_names_differently(config: str) -> None:
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from tunelab.tuning import Peft

    peft_config = {"lora": LoraConfig(r=2), "ia3": IA3Config(), "prompt": PromptTuningConfig(num_virtual_tokens=4),
                   "prefix": PrefixTuningConfig(num_virtual_tokens=4)}[config]
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=99, dim=16, n_layers=2, n_heads=2, hidden_dim=32))
    if config == "prefix":  # DistilBERT has no key/value cache to prefix
        with pytest.raises(ConfigError, match="does not support past key values"):
            Peft(peft_config, name=config).apply(model)
        return
    wrapped = Peft(peft_config, name=config).apply(model)
    assert 0 < sum(p.numel() for p in wrapped.parameters() if p.requires_grad) < sum(p.numel() for p in wrapped.parameters())


def lora_e_ranks(model: torch.nn.Module) -> list[int]:
    """Per AdaLoRA layer, the singular values left (nonzero entries of lora_E)."""
    return [int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n]


def test_adalora_prunes_ranks_during_training(tiny_pretrained: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg, tokenizer, dm, module = build(tmp_path, tiny_pretrained, learnable_csv, "tuning=adalora", "optimizer.lr=1e-2",
                                       "trainer.max_epochs=2", "tuning.peft.init_r=6", "tuning.peft.target_r=2",
                                       "tuning.peft.tinit=1", "tuning.peft.tfinal=2", "tuning.peft.deltaT=1")
    assert [p.numel() for n, p in module.model.named_parameters() if "lora_E" in n] == [6] * 4  # q, v of 2 layers
    trainer = build_trainer(cfg, [])
    trainer.fit(module, datamodule=dm)
    config = module.model.peft_config["default"]
    assert config.total_step == trainer.estimated_stepping_batches == trainer.global_step  # filled from the run
    ranks = lora_e_ranks(module.model)
    assert sum(ranks) == 2 * 4 and config.rank_pattern  # the budget: target_r per layer on average
    assert ranks == [int(sum(mask)) for mask in config.rank_pattern.values()]
    module.save_pretrained(tmp_path / "export", tokenizer)
    reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3),
                                         tmp_path / "export")
    texts = make_rows(8, seed=3)["text"].tolist()
    torch.testing.assert_close(predict_logits(reloaded, tokenizer, texts), predict_logits(module.model, tokenizer, texts))


def test_adalora_refuses_a_schedule_the_run_cannot_finish(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    cfg, _, dm, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=adalora", "trainer.max_epochs=1",
                               "tuning.peft.tfinal=0")
    with pytest.raises(ConfigError, match=r"tuning.peft.total_step \(\d+\) - tuning.peft.tfinal \(0\) is after the run's last"):
        build_trainer(cfg, []).fit(module, datamodule=dm)
    cfg, _, dm, module = build(tmp_path, tiny_bert, learnable_csv, "tuning=adalora", "trainer.max_epochs=1",
                               "tuning.peft.tinit=1000")
    with pytest.raises(ConfigError, match=r"tuning.peft.tinit \(1000\) \+ tuning.peft.tfinal \(1\) leave no step"):
        build_trainer(cfg, []).fit(module, datamodule=dm)


def test_adalora_adds_its_regulariser_where_the_task_computes_the_loss(tiny_pretrained: Path) -> None:
    """Token classification computes its own loss (peft's forward then adds nothing): the strategy adds the same
    term peft adds to a loss computed with labels."""
    from peft import AdaLoraConfig

    from tunelab.tuning.adalora import AdaLoRA

    strategy = AdaLoRA(AdaLoraConfig(init_r=4, total_step=10, orth_reg_weight=0.5), name="adalora")
    model = strategy.apply(AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3))
    with torch.no_grad():  # P and Q away from orthogonal, so the term is not zero
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.normal_()
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "labels": torch.tensor([1])}
    with_labels = model(**batch)  # peft: cross-entropy + 0.5 x R(P, Q)
    assert strategy.loss(with_labels, batch, with_labels.loss) is with_labels.loss
    outputs = model(input_ids=batch["input_ids"])
    task_loss = torch.nn.functional.cross_entropy(outputs.logits, batch["labels"])
    torch.testing.assert_close(strategy.loss(outputs, batch, task_loss), with_labels.loss)
    assert with_labels.loss > task_loss + 0.1


def test_randomised_pissa_exports_a_lora_for_the_untouched_base(tiny_pretrained: Path, learnable_csv: Path,
                                                                tmp_path: Path) -> None:
    """With peft's randomised SVD the init cannot be redone at load: only the converted export reloads right."""
    _, tokenizer, _, module = build(tmp_path, tiny_pretrained, learnable_csv, "tuning=pissa",
                                    "tuning.peft.init_lora_weights=pissa_niter_2")
    with torch.no_grad():  # as if trained
        for n, p in module.model.named_parameters():
            if "lora_" in n:
                p.add_(0.1 * torch.randn_like(p))
    module.save_pretrained(tmp_path / "export", tokenizer)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3)
    texts = make_rows(8, seed=4)["text"].tolist()
    torch.testing.assert_close(predict_logits(PeftModel.from_pretrained(base, tmp_path / "export"), tokenizer, texts),
                               predict_logits(module.model, tokenizer, texts))
