"""On a CUDA GPU: ``trainer=fsdp`` (FSDP2 with bf16 mixed precision, one unit per transformer block,
activation checkpointing), its full and sharded checkpoints, requeue and resume, LoRA and generation under
FSDP2, and ``trainer=gpu``.

Skipped without CUDA (CI has none); ``TUNELAB_REQUIRE_GPU=1`` makes them fail instead. With one GPU, FSDP2
runs one process (a mesh of one rank): the CUDA side (NCCL, bf16 policy, pinned offload) is what these add to
the 2-rank CPU tests in ``tests/test_fsdp.py``, which shard for real.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from tests.conftest import tiny_overrides
from tests.helpers import assert_predict_scores_the_test_split, compose_train
from tests.seq2seq_fixtures import pairs_csv, t5_overrides, tiny_t5  # noqa: F401
from tests.tasks.test_seq2seq import epoch_curves
from tests.test_run_identity import _step_losses
from tunelab import train
from tunelab.requeue import Requeued, ResumeCallback
from tunelab.train import run

REQUIRED = os.environ.get("TUNELAB_REQUIRE_GPU") == "1"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs a CUDA GPU")]

FSDP = ["trainer=fsdp", "trainer.devices=1", "trainer.num_nodes=1"]
FSDP_BF16 = [*FSDP, "trainer.precision=32-true", "trainer.strategy.mixed_precision=bf16",
             "trainer.strategy.activation_checkpointing=true"]


@pytest.fixture(autouse=True, scope="module")
def cuda() -> None:
    if not torch.cuda.is_available():  # only reached with TUNELAB_REQUIRE_GPU=1
        pytest.fail("TUNELAB_REQUIRE_GPU=1 but torch sees no CUDA device", pytrace=False)


@pytest.fixture(autouse=True)
def own_process_group():
    """Each test's runs start without the process group an earlier FSDP run left (one per process in real use)."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def val_losses(run_dir: Path) -> list[float]:
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    return frame.dropna(subset=["val/loss"])["val/loss"].tolist()


def assert_export_holds_checkpoint(run_dir: Path, checkpoint: str | Path, auto_class: type) -> None:
    """Every tensor of the exported ``model/`` equals the (full) checkpoint's: the gathered weights, not a shard."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    exported = auto_class.from_pretrained(run_dir / "model").state_dict()
    assert exported
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, state[f"model.{name}"], rtol=0, atol=0, msg=name)


def test_fsdp_bf16_learns_and_exports_the_gathered_weights(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_train(out, *tiny_overrides(tiny_bert, learnable_csv, *FSDP_BF16))
    metrics = run(cfg)
    assert metrics["distributed"]["strategy"] == "FSDP2Strategy" and metrics["device"].startswith("cuda")
    losses = val_losses(out)[:cfg.trainer.max_epochs]  # one per epoch of fit (then the best's again, unless the last was the best)
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["test"]["accuracy"] > 0.8  # chance is 1/3

    # best.ckpt: one consolidated file whose weights are the export's.
    assert Path(metrics["best_checkpoint"]).is_file()
    assert_export_holds_checkpoint(out, metrics["best_checkpoint"], AutoModelForSequenceClassification)

    # The export, run in fp32 by tunelab-predict, scores the test split as the bf16 run did (give or take a row).
    assert_predict_scores_the_test_split(out, cfg, metrics, tmp_path)


def test_fsdp_sharded_checkpoints_requeue_and_resume(tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Requeue checkpoints are sharded folders; a run requeued mid-epoch resumes from one and ends where an
    uninterrupted run ends (GPU kernels are not bit-reproducible: close, not equal)."""
    overrides = tiny_overrides(tiny_bert, learnable_csv, *FSDP, "trainer.max_epochs=3")
    reference = run(compose_train(tmp_path / "uninterrupted", *overrides))
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train, "ResumeCallback", lambda requeue_signal: ResumeCallback(signal.SIGUSR1))
        with pytest.raises(Requeued, match=r"hpc_ckpt_1\.ckpt at step 41"):
            run(compose_train(out, *overrides, "+callbacks.signal._target_=tests.test_run_identity.SignalAt",
                              "+callbacks.signal.step=40"))
    assert (out / "hpc_ckpt_1.ckpt").is_dir()
    assert json.loads((out / "status.json").read_text())["status"] == "requeued"

    resumed = run(compose_train(out, *overrides, "resume=must"))
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert (out / "checkpoints" / "last.ckpt").is_dir() and not list(out.glob("hpc_ckpt_*"))
    assert resumed["train"]["steps"] == reference["train"]["steps"] == 90
    assert resumed["test"]["accuracy"] == pytest.approx(reference["test"]["accuracy"], abs=1.5 / reference["data"]["test"])
    assert resumed["val"]["loss"] == pytest.approx(reference["val"]["loss"], rel=1e-2)
    assert _step_losses(out) == pytest.approx(_step_losses(tmp_path / "uninterrupted"), rel=1e-2, abs=1e-3)
    mine = AutoModelForSequenceClassification.from_pretrained(out / "model").state_dict()
    theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "uninterrupted" / "model").state_dict()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=1e-2, atol=1e-3, msg=name)


def test_fsdp_lora_trains_only_the_adapters(tiny_pretrained: Path, learnable_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = run(compose_train(out, *tiny_overrides(tiny_pretrained, learnable_csv, *FSDP_BF16, "tuning=lora",
                                                     "optimizer.lr=5e-3", "trainer.max_epochs=3")))
    assert metrics["val"]["accuracy"] > 0.6
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_pretrained, num_labels=3).state_dict()
    frozen = [k for k in state if ".base_layer." in k or "embeddings" in k]
    assert frozen
    for key in frozen:  # model.base_model.model.bert....base_layer.weight -> bert....weight
        name = key.split("base_model.model.", 1)[1].replace(".base_layer", "")
        torch.testing.assert_close(state[key], pretrained[name], rtol=0, atol=0, msg=key)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def test_fsdp_generates_during_validation(tiny_t5: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    metrics = run(compose_train(out, *t5_overrides(tiny_t5, pairs_csv, *FSDP_BF16, "trainer.max_epochs=6")))
    curves = epoch_curves(out)
    assert curves["val/rougeL"].iloc[-1] > curves["val/rougeL"].iloc[0] + 0.15
    assert metrics["test"]["rouge1"] > 0.6
    rows = [json.loads(line) for line in (out / "samples" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["data"]["test"]
    assert_export_holds_checkpoint(out, metrics["best_checkpoint"], AutoModelForSeq2SeqLM)


def test_gpu_preset_learns(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    metrics = run(compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, "trainer=gpu",
                                                                  "trainer.max_epochs=6")))
    assert metrics["device"].startswith("cuda") and metrics["test"]["accuracy"] > 0.8
