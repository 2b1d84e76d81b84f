"""Run identity and resume: the folder follows from the config; an interrupted run resumes from its newest
checkpoint (also mid-epoch) to the same result; a completed run is not trained again."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from transformers import AutoConfig

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tunelab import train
from tunelab.errors import ConfigError
from tunelab.identity import resume_checkpoint, run_folder
from tunelab.requeue import Requeued, ResumeCallback
from tunelab.train import run


class CrashAt(L.Callback):
    """Dies (a node failure) at the end of training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("node failure")


class SignalAt(L.Callback):
    """Sends this process the Slurm requeue signal in the middle of training step ``step`` (after the
    backward pass, before the optimizer step), as Slurm does at an arbitrary moment."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_run_id_is_a_hash_of_what_is_trained(tmp_path: Path) -> None:
    base = compose_train(tmp_path, "seed=1")
    assert base.run_id == compose_train(tmp_path / "elsewhere", "seed=1", "logger=none", "progress=plain",
                                        "paths.root_dir=/data/runs", "tags=[x]", "resume=must").run_id
    assert base.run_id != compose_train(tmp_path, "seed=2").run_id
    assert base.run_id != compose_train(tmp_path, "seed=1", "optimizer.lr=1e-3").run_id
    assert compose_train(tmp_path, "run_id=my-run").run_id == "my-run"
    assert run_folder("abc", "auto") == "abc" and run_folder("abc", "never").startswith("abc-")
    with pytest.raises(ConfigError, match="resume must be one of"):
        run_folder("abc", "sometimes")


def test_completed_run_is_not_trained_again(finished_run: tuple[Path, dict], tiny_bert: Path,
                                            learnable_csv: Path) -> None:
    out, metrics = finished_run
    status = (out / "status.json").read_text()
    again = run(compose_train(out, *tiny_overrides(tiny_bert, learnable_csv)))
    assert again["test"] == pytest.approx(metrics["test"]) and (out / "status.json").read_text() == status


def test_requeued_and_crashed_run_resumes_to_the_same_weights(finished_run: tuple[Path, dict], tiny_bert: Path,
                                                              learnable_csv: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run requeued mid-epoch (signal in the middle of a step), then killed after an epoch end, then
    resumed: its final weights and metrics are those of the uninterrupted run (same batches, same
    dropout masks, same LR schedule)."""
    finished, uninterrupted = finished_run
    assert AutoConfig.from_pretrained(tiny_bert).hidden_dropout_prob > 0  # random masks: RNG states matter
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, learnable_csv)  # 30 steps per epoch, 6 epochs
    with pytest.raises(ConfigError, match="has no checkpoint"):
        run(compose_train(out, *overrides, "resume=must"))

    # Attempt 1: the requeue signal arrives during step 41 (epoch 1); the checkpoint is taken at the next batch start.
    with monkeypatch.context() as patch:  # as under Slurm: the callback handles SIGUSR1 (no scontrol outside a job)
        patch.setattr(train, "ResumeCallback", lambda requeue_signal: ResumeCallback(signal.SIGUSR1))
        with pytest.raises(Requeued, match=r"hpc_ckpt_1\.ckpt at step 41"):
            run(compose_train(out, *overrides, "+callbacks.signal._target_=tests.test_run_identity.SignalAt",
                              "+callbacks.signal.step=40"))
    assert json.loads((out / "status.json").read_text())["status"] == "requeued"
    hpc = torch.load(out / "hpc_ckpt_1.ckpt", weights_only=True)
    assert hpc["global_step"] == 41 and hpc["epoch"] == 1  # mid-epoch
    assert len(hpc["callbacks"]["ResumeCallback"]["rng_states"]) == 1

    # Attempt 2 resumes it and dies at step 70, after epoch 1 saved last.ckpt (step 60).
    with pytest.raises(RuntimeError, match="node failure"):
        run(compose_train(out, *overrides, "resume=must", "+callbacks.crash._target_=tests.test_run_identity.CrashAt",
                          "+callbacks.crash.step=70"))
    assert json.loads((out / "status.json").read_text())["status"] == "failed"

    resumed = run(compose_train(out, *overrides))  # resume=auto: the newest checkpoint, last.ckpt of epoch 1
    assert resumed["train"]["steps"] == uninterrupted["train"]["steps"]
    # The counters cover the whole run, not only the last attempt: 41 + 19 steps up to last.ckpt, then 120.
    assert resumed["train"]["train_samples"] == uninterrupted["train"]["train_samples"] == 6 * 480
    assert [a["train_samples"] for a in resumed["train"]["attempts"]] == [41 * 16, 480 * 2 - 41 * 16, 480 * 4]
    assert resumed["train"]["padding_efficiency"] == pytest.approx(uninterrupted["train"]["padding_efficiency"])
    assert resumed["distributed"]["ranks"][0]["train_samples"] == 6 * 480
    final = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    expected = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["val"] == pytest.approx(uninterrupted["val"], rel=1e-5)
    assert resumed["test"] == pytest.approx(uninterrupted["test"], rel=1e-5)
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert not list(out.glob("hpc_ckpt_*.ckpt"))
    # The training log spans all three attempts: each step once, with the uninterrupted run's losses.
    assert _step_losses(out) == pytest.approx(_step_losses(finished), rel=1e-4)


def _step_losses(run_dir: Path) -> dict[int, float]:
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    rows = frame.dropna(subset=["train/loss_step"])
    assert not rows["step"].duplicated().any()
    return dict(zip(rows["step"].astype(int), rows["train/loss_step"], strict=True))


def test_resume_finds_the_newest_checkpoint_file_or_sharded_folder(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 1}, last)
    assert resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # FSDP state_dict_type=sharded: a folder of per-rank shards
    hpc.mkdir()
    assert resume_checkpoint(tmp_path) == last  # an empty folder is no checkpoint
    (hpc / "__0_0.distcp").write_bytes(b"x")
    os.utime(last, ns=(1, 1))
    assert resume_checkpoint(tmp_path) == last  # shards without .metadata: a save that did not finish
    (hpc / ".metadata").write_bytes(b"x")  # torch.distributed.checkpoint writes it after the shards
    os.utime(hpc, ns=(2, 2))
    assert resume_checkpoint(tmp_path) == last  # Lightning's loop state (meta.pt) comes after them: not yet saved
    (hpc / "meta.pt").write_bytes(b"half a zip")
    assert resume_checkpoint(tmp_path) == last  # cut short
    torch.save({"epoch": 2}, hpc / "meta.pt")
    assert resume_checkpoint(tmp_path) == hpc


def test_new_data_gives_a_new_run_never_the_old_metrics(tiny_bert: Path, tmp_path: Path) -> None:
    """Replacing the training csv by another file: the run id (and folder) change, so the old metrics do not
    come back as 'already completed', nor does an unfinished run resume on other data."""
    from tests.conftest import make_rows

    data = tmp_path / "train.csv"
    make_rows(300, seed=0).to_csv(data, index=False)
    overrides = tiny_overrides(tiny_bert, data, "trainer.max_epochs=1")
    first = compose_train(tmp_path / "a", *overrides).run_id
    assert compose_train(tmp_path / "a", *overrides).run_id == first  # stable for the same bytes
    os.utime(data, ns=(1, 1))
    assert compose_train(tmp_path / "a", *overrides).run_id == first  # a copy's new mtime is the same data
    make_rows(240, seed=5).to_csv(data, index=False)
    assert compose_train(tmp_path / "a", *overrides).run_id != first


def test_named_run_on_other_data_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    from tests.conftest import make_rows

    data = tmp_path / "train.csv"
    make_rows(300, seed=0).to_csv(data, index=False)
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, data, "trainer.max_epochs=1", "run_id=my-run", "logger=none")
    done = run(compose_train(out, *overrides))
    recorded = json.loads((out / "data.json").read_text())["fingerprint"]
    assert recorded[str(data)]["size"] == data.stat().st_size
    make_rows(240, seed=5).to_csv(data, index=False)
    with pytest.raises(ConfigError, match=rf"trained on other data.*{data}: \d+ -> {data.stat().st_size} bytes.*run_id"):
        run(compose_train(out, *overrides))
    assert json.loads((out / "metrics.json").read_text())["test"] == done["test"]  # the old result is untouched


def test_damaged_last_checkpoint_falls_back_or_names_the_file(tiny_bert: Path, learnable_csv: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A truncated last.ckpt (disk full, killed copy): resume passes over it to an older loadable checkpoint,
    or, with none, stops naming it and the command that continues from best.ckpt."""
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, learnable_csv, "trainer.max_epochs=2", "logger=none")
    with pytest.raises(RuntimeError, match="node failure"):  # dies in epoch 1, after epoch 0's checkpoints
        run(compose_train(out, *overrides, "+callbacks.crash._target_=tests.test_run_identity.CrashAt",
                          "+callbacks.crash.step=40"))
    last = out / "checkpoints" / "last.ckpt"
    older = out / "hpc_ckpt_1.ckpt"
    older.write_bytes(last.read_bytes())
    os.utime(older, ns=(1, 1))
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(last.read_bytes())
    with caplog.at_level("WARNING"):
        assert resume_checkpoint(out) == older
    assert f"{last} (not a complete checkpoint" in caplog.text
    older.unlink()
    with pytest.raises(ConfigError, match=rf"no loadable checkpoint.*{last}.*ckpt_path={out / 'checkpoints' / 'best.ckpt'}"):
        run(compose_train(out, *overrides))
    metrics = run(compose_train(out, *overrides, f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}"))
    assert metrics["train"]["steps"] == 2 * 30
    with pytest.raises(ConfigError, match=r"ckpt_path=.*damaged.ckpt: not a complete checkpoint"):
        run(compose_train(tmp_path / "other", *overrides, f"ckpt_path={damaged}"))


def test_only_the_data_is_fingerprinted_not_caches_or_settings(tmp_path: Path) -> None:
    from tunelab.identity import data_fingerprint

    data, cache = tmp_path / "train.csv", tmp_path / "hf-cache"
    data.write_text("text,label\na,b\n")
    cache.mkdir()
    (cache / "blob").write_text("changes with every datasets.map")
    found = data_fingerprint({"_target_": "tunelab.data.sources.load", "path": "csv", "data_files": {"train": str(data)},
                              "cache_dir": str(cache), "encoding": "utf-8"})
    assert list(found) == [str(data)] and found[str(data)]["size"] == data.stat().st_size


def test_lightning_checkpoint_names_and_remote_paths_pass_through(tmp_path: Path) -> None:
    folder = train.RunFolder(tmp_path)
    for given in ("last", "hpc", "s3://bucket/run/last.ckpt"):
        assert train.resume_from(compose_train(tmp_path, f"ckpt_path={given}"), folder) == given
