"""Every tuning method on a tiny BERT: it learns, frozen weights stay bit-identical, the counts
are right, the optimizer sees only trainable parameters, and the export reloads to the same
predictions."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tunelab.errors import ConfigError
from tunelab.exported import load_run_model
from tunelab.models import load_tokenizer
from tunelab.tasks import SequenceClassificationModule
from tunelab.train import build_datamodule, build_module, build_trainer

# method -> (learning rate for the tiny BERT, epochs)
METHODS = {
    "full": (1e-3, 3),
    "freeze": (1e-3, 3),
    "head-only": (1e-2, 3),
    "bitfit": (1e-2, 3),
    "lora": (5e-3, 3),
    "ia3": (1e-2, 3),
    "prompt": (1e-2, 3),
    "prefix": (1e-2, 3),
    "ptuning": (1e-2, 3),
    "adapter": (5e-3, 3),
}


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
    lr, epochs = METHODS[method]
    extra = ["tuning.n_blocks=1"] if method == "freeze" else []
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
    assert after["val/accuracy"] > 0.6, (before, after)
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
    if cfg.tuning._target_.endswith("Peft"):  # plain peft reload: the trained head comes back, not a random one
        base = AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3)
        torch.testing.assert_close(predict_logits(PeftModel.from_pretrained(base, export), tokenizer, texts), expected)
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
