"""MLM and CLM learn, report token-weighted perplexity, export, predict per row, and seed a classifier (DAPT)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchmetrics.functional.text import perplexity as tm_perplexity
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tests.lm_fixtures import lm_lines, lm_overrides, lm_text, tiny_gpt2, write_lines  # noqa: F401
from tunelab.data import LanguageModelingDataModule
from tunelab.errors import ConfigError
from tunelab.predict import predict
from tunelab.tasks import CausalLMModule, MaskedLMModule
from tunelab.train import build_module, run


def epoch_curve(run_dir: Path, key: str) -> list[float]:
    frame = pd.read_csv(next((run_dir / "logs").rglob("metrics.csv")))
    return frame.dropna(subset=[key]).groupby("epoch")[key].last().tolist()


@pytest.fixture(scope="module")
def mlm_run(tiny_bert: Path, lm_text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("mlm") / "run"
    return out, run(compose_train(out, *lm_overrides(tiny_bert, lm_text, "mlm", "optimizer.lr=5e-3")))


@pytest.fixture(scope="module")
def clm_run(tiny_gpt2: Path, lm_text: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("clm") / "run"
    return out, run(compose_train(out, *lm_overrides(tiny_gpt2, lm_text, "clm", "trainer.max_epochs=5", "optimizer.lr=1e-2")))


@pytest.mark.parametrize("which", ["mlm_run", "clm_run"])
def test_language_models_learn(which: str, request: pytest.FixtureRequest) -> None:
    run_dir, metrics = request.getfixturevalue(which)
    perplexity = epoch_curve(run_dir, "val/perplexity")
    loss = epoch_curve(run_dir, "train/loss_epoch")
    assert len(perplexity) >= 5 and all(b < a for a, b in itertools.pairwise(perplexity[:-1]))
    assert perplexity[-1] < perplexity[0] / 2 and loss[-1] < loss[0] - 0.5
    assert metrics["test"]["perplexity"] < (30 if which == "mlm_run" else 12)  # from ~100 tokens at random
    assert metrics["val"]["perplexity"] == pytest.approx(min(perplexity), rel=1e-4)  # best checkpoint


def _module_and_batches(cls: type, model: Path, text: Path, objective: str) -> tuple:
    dm = LanguageModelingDataModule(AutoTokenizer.from_pretrained(model), objective=objective, block_size=24,
                                    eval_batch_size=5, source={"_target_": "tunelab.data.sources.load",
                                                               "data_files": {"train": str(text)}})
    dm.setup("fit")
    module = cls(model={"name_or_path": str(model)}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
                 objective=objective).eval()
    return module, list(dm.val_dataloader())


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_perplexity_equals_a_hand_computation_over_all_tokens(
    objective: str, tiny_bert: Path, tiny_gpt2: Path, lm_text: Path  # noqa: F811
) -> None:
    cls, model = (MaskedLMModule, tiny_bert) if objective == "mlm" else (CausalLMModule, tiny_gpt2)
    module, batches = _module_and_batches(cls, model, lm_text, objective)
    shift = module.shift
    logits, labels, batch_means = [], [], []
    with torch.no_grad():
        for batch in batches:
            outputs = module(batch)
            module.update_metrics(module.val_metrics, outputs, batch, "val")
            logits.append(outputs.logits[:, : outputs.logits.size(1) - shift].flatten(0, 1))
            labels.append(batch["labels"][:, shift:].flatten())
            batch_means.append(outputs.loss.item())
    counts = [int((b["labels"][:, shift:] != -100).sum()) for b in batches]
    assert len(set(counts)) > 1  # batches differ in targets: a plain mean of batch losses would be off
    expected = tm_perplexity(torch.cat(logits)[None], torch.cat(labels)[None], ignore_index=-100)
    got = module.val_metrics.compute()["val/perplexity"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert got.item() != pytest.approx(torch.tensor(batch_means).mean().exp().item(), rel=1e-4)


def test_clm_predict_scores_each_row_like_plain_transformers(clm_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = clm_run
    lines = lm_lines(12, seed=5)
    data = write_lines(tmp_path / "new.txt", lines)
    result = predict(run_dir, data, tmp_path / "scores.csv")
    scores = pd.read_csv(result["predictions"])
    assert scores["text"].str.strip().tolist() == lines  # input order
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    with torch.no_grad():
        for text, tokens, ppl in zip(scores["text"], scores["tokens"], scores["perplexity"], strict=True):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            assert tokens == ids.size(1) - 1
            assert ppl == pytest.approx(model(input_ids=ids, labels=ids).loss.exp().item(), rel=1e-4)
    nll = (scores["perplexity"].map(float).apply(torch.tensor).apply(torch.log) * scores["tokens"]).sum()
    assert result["metrics"]["perplexity"] == pytest.approx(torch.exp(nll / scores["tokens"].sum()).item(), rel=1e-4)


def test_mlm_export_reloads_and_predicts_deterministically(mlm_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, metrics = mlm_run
    exported = AutoModelForMaskedLM.from_pretrained(run_dir / "model")
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for name, value in exported.state_dict().items():
        assert torch.equal(value, best[f"model.{name}"]), name
    data = write_lines(tmp_path / "new.txt", lm_lines(40, seed=6))
    first, second = predict(run_dir, data, tmp_path / "a.csv"), predict(run_dir, data, tmp_path / "b.csv")
    assert first["metrics"] == second["metrics"] and first["metrics"]["perplexity"] < 30
    assert pd.read_csv(first["predictions"]).equals(pd.read_csv(second["predictions"]))


def _classifier_from(model_dir: Path, tiny_bert: Path, tmp_path: Path, learnable_csv: Path) -> tuple:
    from tests.conftest import CLASSES

    cfg = compose_train(tmp_path / "clf", *tiny_overrides(tiny_bert, learnable_csv), f"model.name_or_path={model_dir}")

    class Labels:
        def module_kwargs(self) -> dict:
            return {"labels": CLASSES}

    return cfg, build_module(cfg, Labels())


def test_domain_adaptive_pretraining_then_classification(
    mlm_run: tuple[Path, dict], tiny_bert: Path, learnable_csv: Path, tmp_path: Path
) -> None:
    """Step 2 of the recipe: `task=<classification> model.name_or_path=<mlm run>/model`."""
    run_dir, _ = mlm_run
    adapted = AutoModelForMaskedLM.from_pretrained(run_dir / "model").bert.state_dict()
    _, module = _classifier_from(run_dir / "model", tiny_bert, tmp_path, learnable_csv)
    encoder = module.model.bert.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in adapted.items() if k in encoder)  # starts from the MLM weights
    assert set(encoder) - set(adapted) <= {"pooler.dense.weight", "pooler.dense.bias"}  # no pooler in an MLM: new
    original = AutoModelForMaskedLM.from_pretrained(tiny_bert).bert.state_dict()
    assert not torch.equal(original["encoder.layer.0.attention.self.query.weight"], encoder["encoder.layer.0.attention.self.query.weight"])
    metrics = run(compose_train(tmp_path / "clf-run", *tiny_overrides(tiny_bert, learnable_csv), f"model.name_or_path={run_dir / 'model'}",
                                "trainer.max_steps=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"))
    assert metrics["train"]["steps"] == 3 and "accuracy" in metrics["test"]


def test_lora_mlm_export_seeds_a_classifier_through_its_merged_model(
    tiny_bert: Path, lm_text: Path, learnable_csv: Path, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "lora"
    run(compose_train(out, *lm_overrides(tiny_bert, lm_text, "mlm", "tuning=lora", "tuning.merge_on_export=true",
                                         "trainer.max_epochs=1", "optimizer.lr=3e-2")))
    merged = AutoModelForMaskedLM.from_pretrained(out / "model" / "merged").bert.state_dict()
    _, module = _classifier_from(out / "model", tiny_bert, tmp_path, learnable_csv)  # the adapter folder: merged is used
    encoder = module.model.bert.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in merged.items() if k in encoder)
    original = AutoModelForMaskedLM.from_pretrained(tiny_bert).bert.state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(original[key], merged[key])  # the LoRA update is in the merged weights

    shutil.rmtree(out / "model" / "merged")
    with pytest.raises(ConfigError, match=r"holds only a PEFT adapter.*tuning.merge_on_export=true"):
        _classifier_from(out / "model", tiny_bert, tmp_path, learnable_csv)


def test_clm_refuses_a_bidirectional_encoder(tiny_bert: Path) -> None:
    optimizer = {"_target_": "torch.optim.SGD", "lr": 0.1}
    with pytest.raises(ConfigError, match=r"bidirectional encoder.*task=mlm.*model.config_overrides.is_decoder=true"):
        CausalLMModule(model={"name": "tiny", "name_or_path": str(tiny_bert)}, optimizer=optimizer)
    decoder = CausalLMModule(model={"name_or_path": str(tiny_bert), "config_overrides": {"is_decoder": True}}, optimizer=optimizer)
    assert decoder.model.config.is_decoder
    with pytest.raises(ConfigError, match=r"task.data.objective=mlm but the task module CausalLMModule trains 'clm'"):
        CausalLMModule(model={"name_or_path": str(tiny_bert)}, optimizer=optimizer, objective="mlm")
