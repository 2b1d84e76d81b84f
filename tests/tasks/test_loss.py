"""``task.loss`` (label smoothing, class weights) of sequence and token classification: the training loss equals the
formulas written out here, balanced weights equal scikit-learn's, bad options stop with the key named, evaluation
losses stay the plain cross-entropy, a run trains, and AdaLoRA's regulariser is still added."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from sklearn.utils.class_weight import compute_class_weight

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tests.ner_fixtures import TAGS, tagged_rows, write_jsonl
from tunelab.batch import model_inputs
from tunelab.config_checks import check_config
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.tasks.loss import check_loss_options
from tunelab.train import build_datamodule, build_module, build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")
IGNORE = -100


@pytest.fixture(scope="module")
def skewed_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learnable topics with unequal classes: alpha 200, beta 80, gamma 40 rows."""
    rows = make_rows(600, seed=1)
    keep = {"alpha": 200, "beta": 80, "gamma": 40}
    rows = pd.concat([rows[rows["label"] == label].head(n) for label, n in keep.items()])
    path = tmp_path_factory.mktemp("skewed") / "skewed.csv"
    rows.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def ner_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tagged_rows(120, seed=2), tmp_path_factory.mktemp("ner-loss") / "train.jsonl")


def overrides(kind: str, tiny_bert: Path, skewed_csv: Path, ner_jsonl: Path, *extra: str) -> list[str]:
    if kind == "sequence":
        return tiny_overrides(tiny_bert, skewed_csv, "trainer.max_epochs=2", *extra)
    return ["task=ner-json", f"task.data.source.data_files.train={ner_jsonl}", f"model.name_or_path={tiny_bert}",
            "model.name=tiny-test", "progress=none", "logger=csv", "scheduler=linear", "task.data.batch_size=16",
            "callbacks.early_stopping=null", "trainer.max_epochs=2", f"task.data.labels=[{','.join(TAGS)}]", *extra]


def build(tmp_path: Path, args: list[str]):
    cfg = compose_train(tmp_path / "run", *args)
    check_config(cfg)  # the start-up checks accept task.loss and the module's loss argument
    L.seed_everything(cfg.seed)
    dm = build_datamodule(cfg, load_tokenizer(cfg.model))
    dm.setup("fit")
    return cfg, dm, build_module(cfg, dm)


def first_batch(dm) -> dict:
    return next(iter(dm.train_dataloader()))


def sharpen(module) -> None:
    """A head far from uniform, so that smoothing and weighting change the loss by more than the tolerance."""
    with torch.no_grad():
        module.model.classifier.weight.normal_(std=2.0)


def per_position(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (positions x classes, float64) and targets of the labelled positions."""
    logp = torch.log_softmax(logits.detach().double(), -1).reshape(-1, logits.shape[-1]).numpy()
    y = labels.reshape(-1).numpy()
    return logp[y != IGNORE], y[y != IGNORE]


def smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    logp, y = per_position(logits, labels)
    nll = -logp[np.arange(len(y)), y]
    return float(np.mean((1 - eps) * nll + eps * (-logp).mean(-1)))


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: np.ndarray) -> float:
    logp, y = per_position(logits, labels)
    nll = -logp[np.arange(len(y)), y]
    return float((weights[y] * nll).sum() / weights[y].sum())


def train_label_ids(kind: str, dm) -> np.ndarray:
    """What the loss trains on: one label per training row, or every labelled sub-token of the training windows."""
    if kind == "sequence":
        return np.array(dm.examples["train"]["labels"])
    return np.array([t for row in dm.features["train"]["labels"] for t in row if t != IGNORE])


KINDS = ["sequence", "token"]


@pytest.mark.parametrize("kind", KINDS)
def test_label_smoothing_trains_on_the_smoothed_cross_entropy_and_evaluates_the_plain_one(
        kind: str, tiny_bert: Path, skewed_csv: Path, ner_jsonl: Path, tmp_path: Path) -> None:
    _, dm, module = build(tmp_path, overrides(kind, tiny_bert, skewed_csv, ner_jsonl, "task.loss.label_smoothing=0.1"))
    sharpen(module)
    batch = first_batch(dm)
    with torch.no_grad():
        outputs = module(batch)
        loss = module.loss(outputs, batch)
    assert loss.item() == pytest.approx(smoothed_ce(outputs.logits, batch["labels"], 0.1), rel=1e-5)
    # the forward pass's loss (val/loss, test/loss): plain cross-entropy, below the smoothed one here
    assert outputs.loss.item() == pytest.approx(smoothed_ce(outputs.logits, batch["labels"], 0.0), rel=1e-5)
    assert abs(outputs.loss.item() - loss.item()) > 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("given", ["balanced", "list"])
def test_class_weights_balanced_and_given(kind: str, given: str, tiny_bert: Path, skewed_csv: Path, ner_jsonl: Path,
                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = 3 if kind == "sequence" else len(TAGS)
    listed = [0.5 + i for i in range(n)]
    option = "balanced" if given == "balanced" else f"[{','.join(map(str, listed))}]"
    _, dm, module = build(tmp_path, overrides(kind, tiny_bert, skewed_csv, ner_jsonl, f"task.loss.class_weights={option}"))
    with caplog.at_level(logging.INFO, logger="tunelab.tasks.loss"):
        module.criterion.fit(dm.features["train"], module.device)
    if given == "balanced":
        ids = train_label_ids(kind, dm)
        expected = compute_class_weight("balanced", classes=np.arange(n), y=ids)
        assert len(set(np.bincount(ids).tolist())) == n  # unequal classes: the weights differ
    else:
        expected = np.array(listed)
    np.testing.assert_allclose(module.criterion.weight.numpy(), expected, rtol=1e-6)
    # a buffer: moved to the device with the module, left out of checkpoints
    assert any(b is module.criterion.weight for b in module.buffers()) and "criterion.weight" not in module.state_dict()
    labels = module.labels
    assert f"{labels[0]}: {expected[0]:.4g}" in caplog.text and f"{labels[-1]}: {expected[-1]:.4g}" in caplog.text
    sharpen(module)
    batch = first_batch(dm)
    with torch.no_grad():
        outputs = module(batch)
        loss = module.loss(outputs, batch)
    assert loss.item() == pytest.approx(weighted_ce(outputs.logits, batch["labels"], expected), rel=1e-5)
    assert outputs.loss.item() == pytest.approx(weighted_ce(outputs.logits, batch["labels"], np.ones(n)), rel=1e-5)
    assert abs(loss.item() - outputs.loss.item()) > 1e-2


def test_bad_weight_lists_stop_with_the_key_and_the_labels(tiny_bert: Path, skewed_csv: Path, tmp_path: Path) -> None:
    declared = "task.data.labels=[alpha,beta,gamma]"
    with pytest.raises(ConfigError, match=r"task\.loss\.class_weights has 2 weights but needs one per label, 3 in "
                                          r"task\.data\.labels order: \['alpha', 'beta', 'gamma'\]"):
        check_config(compose_train(tmp_path, *tiny_overrides(tiny_bert, skewed_csv, declared,
                                                             "task.loss.class_weights=[1,2]")))
    with pytest.raises(ConfigError, match=r"task\.loss\.class_weights must be positive numbers.*got 0"):
        check_config(compose_train(tmp_path, *tiny_overrides(tiny_bert, skewed_csv, "task.loss.class_weights=[1,0,2]")))
    # labels inferred from train: the length is checked when the module is built
    with pytest.raises(ConfigError, match=r"has 4 weights.*3 in task\.data\.labels order: \['alpha', 'beta', 'gamma'\]"):
        build(tmp_path, tiny_overrides(tiny_bert, skewed_csv, "task.loss.class_weights=[1,2,3,4]"))
    with pytest.raises(ConfigError, match=r"task\.loss\.label_smoothing must be a number in \[0, 1\)"):
        check_config(compose_train(tmp_path, *tiny_overrides(tiny_bert, skewed_csv, "task.loss.label_smoothing=1.0")))
    with pytest.raises(ConfigError, match=r"must be null, 'balanced' or a list"):
        check_loss_options({"class_weights": "Balanced"})
    with pytest.raises(ConfigError, match=r"task\.loss\.smoothing is not a loss option; did you mean task\.loss\.label_smoothing"):
        check_config(compose_train(tmp_path, *tiny_overrides(tiny_bert, skewed_csv, "+task.loss.smoothing=0.1")))


def test_balanced_weights_refuse_a_class_absent_from_train(tiny_bert: Path, skewed_csv: Path, tmp_path: Path) -> None:
    cfg, dm, module = build(tmp_path, tiny_overrides(tiny_bert, skewed_csv, "task.data.labels=[alpha,beta,gamma,delta]",
                                                     "task.loss.class_weights=balanced"))
    with pytest.raises(ConfigError, match=r"task\.loss\.class_weights=balanced: class 'delta' has no example in the "
                                          r"training split"):
        build_trainer(cfg, []).fit(module, datamodule=dm)  # counted when the trainer fits


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_with_smoothing_and_balanced_weights_learns(kind: str, tiny_bert: Path, skewed_csv: Path,
                                                          ner_jsonl: Path, tmp_path: Path) -> None:
    cfg, dm, module = build(tmp_path, overrides(kind, tiny_bert, skewed_csv, ner_jsonl, "task.loss.label_smoothing=0.1",
                                                "task.loss.class_weights=balanced", "optimizer.lr=1e-2",
                                                "trainer.num_sanity_val_steps=0"))
    trainer = build_trainer(cfg, [])
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=dm)  # setup('fit') counts the weights from dm's training split
    n = len(module.labels)
    np.testing.assert_allclose(module.criterion.weight.numpy(),
                               compute_class_weight("balanced", classes=np.arange(n), y=train_label_ids(kind, dm)),
                               rtol=1e-6)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    assert after < 0.8 * before, (before, after)
    if kind == "sequence":  # val/loss is the plain cross-entropy over the validation rows
        module.eval()
        nll, rows = 0.0, 0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                logits = module.model(**model_inputs(batch, targets=False)).logits
                nll += smoothed_ce(logits, batch["labels"], 0.0) * len(batch["labels"])
                rows += len(batch["labels"])
        assert after == pytest.approx(nll / rows, rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_adalora_adds_its_regulariser_to_the_smoothed_loss(kind: str, tiny_bert: Path, skewed_csv: Path,
                                                           ner_jsonl: Path, tmp_path: Path) -> None:
    _, dm, module = build(tmp_path, overrides(kind, tiny_bert, skewed_csv, ner_jsonl, "tuning=adalora",
                                              "tuning.peft.orth_reg_weight=0.5", "task.loss.label_smoothing=0.1"))
    module.eval()
    with torch.no_grad():  # P and Q away from orthogonal, so the term is not zero
        for n, p in module.model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.normal_()
    batch = first_batch(dm)
    with torch.no_grad():
        outputs = module(batch)
        loss = module.loss(outputs, batch)
        # peft's own: a forward with labels adds 0.5 x R(P, Q) to the model's (plain) cross-entropy
        peft_loss = module.model(**model_inputs(batch)).loss
    regulariser = peft_loss.item() - smoothed_ce(outputs.logits, batch["labels"], 0.0)
    assert regulariser > 0.1
    assert loss.item() == pytest.approx(smoothed_ce(outputs.logits, batch["labels"], 0.1) + regulariser, rel=1e-5)


def test_regression_has_no_loss_options(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "task=stsb")
    assert cfg.task.loss is None and "loss" not in cfg.task.module  # the regression module takes no such argument
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'task\.loss\.label_smoothing'"):
        compose_train(tmp_path, "task=stsb", "task.loss.label_smoothing=0.1")
