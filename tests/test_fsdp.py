"""FSDP2 (``trainer=fsdp``, ``tunelab.fsdp``) for real: two CPU processes over gloo, each holding half of every
weight. A 2-rank run equals ``trainer=ddp`` on 2 ranks and one process with the same global batch; it resumes
exactly from its sharded checkpoint at the same world size and at one rank; the export and the full best
checkpoint hold the gathered weights; every tuning method trains, PEFT leaving the base weights bit-identical.

Dropout is off and batches are shuffled, not length-grouped, so that a 2-rank step (two halves of 32 examples)
and a 1-rank step (the same 32 examples) see the same data: the runs may differ only by float reduction order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tests.seq2seq_fixtures import pairs_csv, t5_overrides, tiny_t5  # noqa: F401
from tunelab.exported import load_run_model
from tunelab.train import run

ROOT = Path(__file__).resolve().parents[1]
SAME_DATA = ["task.data.group_by_length=false", "+model.config_overrides.hidden_dropout_prob=0",
             "+model.config_overrides.attention_probs_dropout_prob=0", "trainer.max_epochs=2", "progress=plain"]
PORTS = iter(range(29611, 29699))


def train(run_dir: Path, *overrides: str, trainer: str = "fsdp", devices: int = 2) -> subprocess.CompletedProcess:
    """``python train.py`` in ``devices`` CPU processes (Lightning starts the other ranks), outside Slurm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(next(PORTS)))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"trainer={trainer}", f"trainer.devices={devices}",
                           "trainer.num_nodes=1", "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def train_ok(run_dir: Path, *overrides: str, **kwargs: Any) -> dict[str, Any]:
    proc = train(run_dir, *overrides, **kwargs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return json.loads((run_dir / "metrics.json").read_text())


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["state_dict"]


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], **tol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, msg=name, **({"rtol": 1e-4, "atol": 1e-5} | tol))


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = pd.read_csv(run_dir / "logs" / "metrics.csv").dropna(subset=["train/loss_step"])
    assert not rows["step"].duplicated().any()
    return dict(zip(rows["step"].astype(int), rows["train/loss_step"], strict=True))


@pytest.fixture(scope="module")
def fsdp_run(tiny_bert: Path, learnable_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The reference: 2 ranks of FSDP2, 16 examples each per step, 15 steps an epoch, 2 epochs."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    return run_dir, train_ok(run_dir, *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA))


def test_two_ranks_hold_half_of_every_weight(fsdp_run: tuple[Path, dict[str, Any]]) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    run_dir, metrics = fsdp_run
    dist = metrics["distributed"]
    assert dist["strategy"] == "FSDP2Strategy" and dist["world_size"] == 2 and dist["mesh"] == {"shard": 2}
    # each rank holds its shards only: together the whole model, each about half of it
    local = [rank["local_params"] for rank in dist["ranks"]]
    assert sum(local) == metrics["params"]["total"] and max(local) < 0.51 * metrics["params"]["total"]
    # last.ckpt is a torch.distributed.checkpoint folder: one file per rank, each weight in two row shards
    last = run_dir / "checkpoints" / "last.ckpt"
    assert {p.name for p in last.iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"}
    meta = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    query = meta["state_dict.model.bert.encoder.layer.0.intermediate.dense.weight"]
    assert list(query.size) == [64, 32] and sorted(list(c.sizes) for c in query.chunks) == [[32, 32], [32, 32]]
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*.old"))
    # best.ckpt is one full file and model/ the consolidated export, both equal to the gathered weights
    best = weights(run_dir / "checkpoints" / "best.ckpt")
    assert best["model.bert.encoder.layer.0.intermediate.dense.weight"].shape == (64, 32)
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").state_dict()
    assert_same_weights({f"model.{k}": v for k, v in exported.items()}, best, rtol=0, atol=0)


def test_equals_ddp_on_two_ranks_and_one_process_with_the_same_global_batch(
        fsdp_run: tuple[Path, dict[str, Any]], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    run_dir, fsdp = fsdp_run
    ddp = train_ok(tmp_path / "ddp", *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA), trainer="ddp")
    assert ddp["train"]["steps"] == fsdp["train"]["steps"] == 30
    assert ddp["val"] == pytest.approx(fsdp["val"], rel=1e-4) and ddp["test"] == pytest.approx(fsdp["test"], rel=1e-4)
    assert_same_weights(weights(tmp_path / "ddp" / "checkpoints" / "best.ckpt"), weights(run_dir / "checkpoints" / "best.ckpt"))
    assert step_losses(tmp_path / "ddp") == pytest.approx(step_losses(run_dir), rel=1e-4)  # rank 0's batches

    single = run(compose_train(tmp_path / "one", *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA, "task.data.batch_size=32")))
    assert single["train"]["steps"] == 30
    assert single["val"] == pytest.approx(fsdp["val"], rel=1e-4) and single["test"] == pytest.approx(fsdp["test"], rel=1e-4)
    assert_same_weights(weights(tmp_path / "one" / "checkpoints" / "best.ckpt"), weights(run_dir / "checkpoints" / "best.ckpt"))


def test_strategy_options_train_as_the_default_does(fsdp_run: tuple[Path, dict[str, Any]], tiny_bert: Path,
                                                    learnable_csv: Path, tmp_path: Path) -> None:
    """Every key of configs/trainer/fsdp.yaml: ZeRO-2-like resharding, activation checkpointing, CPU offload and
    the hybrid mesh (one node: 1 replica x 2 shards) change where weights live and when, not the result; bf16
    mixed precision (bf16 compute and all-gathers, fp32 reductions over fp32 shards) stays close to it."""
    reference_dir, reference = fsdp_run
    options = ["trainer.strategy.reshard_after_forward=false", "trainer.strategy.activation_checkpointing=true",
               "trainer.strategy.cpu_offload=true", "trainer.strategy.hybrid_shard=true"]
    metrics = train_ok(tmp_path / "options", *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA, *options))
    dist = metrics["distributed"]
    assert dist["mesh"] == {"replicate": 1, "shard": 2} and dist["activation_checkpointing"] and dist["cpu_offload"]
    assert metrics["test"] == pytest.approx(reference["test"], rel=1e-4)
    assert_same_weights(weights(tmp_path / "options" / "checkpoints" / "best.ckpt"), weights(reference_dir / "checkpoints" / "best.ckpt"))

    bf16 = train_ok(tmp_path / "bf16", *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA, "trainer.strategy.mixed_precision=bf16"))
    assert bf16["distributed"]["mixed_precision"] == "bf16"
    assert weights(tmp_path / "bf16" / "checkpoints" / "best.ckpt")["model.classifier.weight"].dtype == torch.float32  # fp32 masters
    assert bf16["val"]["loss"] == pytest.approx(reference["val"]["loss"], rel=2e-2)


def test_resumes_exactly_from_its_sharded_checkpoint_on_two_ranks_and_on_one(
        fsdp_run: tuple[Path, dict[str, Any]], tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    reference_dir, reference = fsdp_run
    overrides = tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA)
    out = tmp_path / "run"
    crashed = train(out, *overrides, "+callbacks.crash._target_=tests.test_run_identity.CrashAt", "+callbacks.crash.step=20")
    assert crashed.returncode != 0 and "node failure" in crashed.stderr
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    epoch_end = tmp_path / "epoch0.ckpt"  # last.ckpt of epoch 0 (step 15), sharded over 2 ranks
    shutil.copytree(out / "checkpoints" / "last.ckpt", epoch_end)
    assert torch.load(epoch_end / "meta.pt", weights_only=True)["global_step"] == 15

    resumed = train_ok(out, *overrides, "resume=must")  # 2 ranks again
    assert resumed["train"]["steps"] == 30 and resumed["test"] == pytest.approx(reference["test"], rel=1e-5)
    assert_same_weights(weights(out / "checkpoints" / "best.ckpt"), weights(reference_dir / "checkpoints" / "best.ckpt"),
                        rtol=1e-5, atol=1e-6)
    assert step_losses(out) == pytest.approx(step_losses(reference_dir), rel=1e-5)  # steps 1-15, then 16-30 resumed

    # 2 -> 1: one process reads the 2-rank shards (DCP reshards) and trains on the same 32-example steps
    one = tmp_path / "one"
    proc = train(one, *tiny_overrides(tiny_bert, learnable_csv, *SAME_DATA, "task.data.batch_size=32"),
                 f"ckpt_path={epoch_end}", devices=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "does not shard anything" in proc.stdout + proc.stderr  # one process: said, not silent
    single = json.loads((one / "metrics.json").read_text())
    assert single["distributed"]["world_size"] == 1 and single["train"]["steps"] == 30
    assert single["test"] == pytest.approx(reference["test"], rel=1e-4)
    assert_same_weights(weights(one / "checkpoints" / "best.ckpt"), weights(reference_dir / "checkpoints" / "best.ckpt"))


def test_lora_trains_its_adapters_and_leaves_the_base_weights_bit_identical(
        tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    lora_run = ["tuning=lora", "tuning.peft.lora_dropout=0", "optimizer.lr=5e-3", *SAME_DATA]
    metrics = train_ok(out, *tiny_overrides(tiny_bert, learnable_csv, *lora_run))
    assert sum(r["local_params"] for r in metrics["distributed"]["ranks"]) == metrics["params"]["total"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    best = weights(out / "checkpoints" / "best.ckpt")  # gathered from the shards
    lora_prefix = "model.base_model.model."
    for name, tensor in base.items():
        if name.startswith("classifier."):
            continue  # the head is trained (modules_to_save)
        key = lora_prefix + name.replace(".query.", ".query.base_layer.").replace(".value.", ".value.base_layer.")
        assert torch.equal(best[key], tensor), key
    lora = {k: v for k, v in best.items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: the adapters trained
    # The export is plain peft: on the untouched base it reproduces the checkpoint's adapter weights.
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, ignore_mismatched_sizes=True)
    reloaded = {f"model.{k}": v for k, v in PeftModel.from_pretrained(plain, out / "model").state_dict().items()}
    for key, tensor in lora.items():
        assert torch.equal(reloaded[key], tensor), key
    # and the adapters trained as in one process on the same 32-example steps
    single = run(compose_train(tmp_path / "one", *tiny_overrides(tiny_bert, learnable_csv, *lora_run, "task.data.batch_size=32")))
    assert single["test"] == pytest.approx(metrics["test"], rel=1e-4)
    assert_same_weights(weights(tmp_path / "one" / "checkpoints" / "best.ckpt"), best)


@pytest.mark.parametrize("tuning", ["freeze", "bitfit", "ia3", "prompt", "adapter", "distill"])
def test_every_tuning_method_trains_under_fsdp2(tuning: str, tiny_bert: Path, learnable_csv: Path,
                                                fsdp_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Frozen and trainable parameters in one unit (freeze: the bottom block frozen, the top one trained;
    BitFit: biases in every block), peft's IA3 and prompt tuning (virtual tokens before the sharded
    embeddings), bottleneck adapters inside the blocks, a replicated teacher (distill: the reference run's
    export)."""
    teacher_dir, _ = fsdp_run
    extra = {"freeze": ["tuning.n_blocks=1"], "bitfit": [], "ia3": [], "prompt": [], "adapter": [],
             "distill": [f"tuning.teacher={teacher_dir / 'model'}"]}[tuning]
    out = tmp_path / tuning
    metrics = train_ok(out, *tiny_overrides(tiny_bert, learnable_csv, f"tuning={tuning}", *extra, "trainer.max_epochs=1",
                                            "progress=plain"))
    assert metrics["distributed"]["strategy"] == "FSDP2Strategy" and metrics["train"]["steps"] == 15
    initial = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    best = weights(out / "checkpoints" / "best.ckpt")
    if tuning == "freeze":  # block 0 (and the embeddings) frozen: bit-identical; block 1 trained
        for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.dense.weight"):
            assert torch.equal(best[f"model.{name}"], initial[name]), name
        name = "bert.encoder.layer.1.output.dense.weight"
        assert not torch.equal(best[f"model.{name}"], initial[name])
    if tuning == "bitfit":  # one unit, two fates: a block's weights frozen, its biases trained
        name = "bert.encoder.layer.0.output.dense"
        assert torch.equal(best[f"model.{name}.weight"], initial[f"{name}.weight"])
        assert not torch.equal(best[f"model.{name}.bias"], initial[f"{name}.bias"])
    if tuning in ("ia3", "prompt"):  # the base model's weights stay as they were
        base = {k.split("bert.", 1)[1]: v for k, v in best.items() if ".bert." in k and "ia3_" not in k}
        assert base and all(torch.equal(v, initial["bert." + k.replace(".base_layer", "")]) for k, v in base.items())
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    texts = make_rows(8, seed=5)["text"].tolist()
    model = load_run_model(out)  # the export reloads
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert logits.shape == (8, 3) and torch.isfinite(logits).all()


def test_generates_with_sharded_weights_as_ddp_does(tiny_t5: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    """Encoder-decoder generation in validation and test (greedy ``generate``, which runs the encoder and the
    decoder outside the model's forward) on 2 ranks: the texts and scores of DDP. (One process differs here:
    each rank's loss is a mean over its own target tokens, so 2 x 16 examples are not one 32-example batch.)"""
    same = ["task.data.group_by_length=false", "+model.config_overrides.dropout_rate=0", "trainer.max_epochs=2"]
    metrics = train_ok(tmp_path / "fsdp", *t5_overrides(tiny_t5, pairs_csv, *same))
    ddp = train_ok(tmp_path / "ddp", *t5_overrides(tiny_t5, pairs_csv, *same), trainer="ddp")
    assert metrics["distributed"]["strategy"] == "FSDP2Strategy"
    assert metrics["test"] == pytest.approx(ddp["test"], rel=1e-4) and metrics["val"] == pytest.approx(ddp["val"], rel=1e-4)
    samples = [(tmp_path / run / "samples" / "test.jsonl").read_text().splitlines() for run in ("fsdp", "ddp")]
    assert len(samples[0]) == metrics["data"]["test"] and samples[0] == samples[1]


@pytest.fixture
def one_rank_mesh() -> Any:
    """A 1-rank gloo process group and its mesh, in this process (destroyed afterwards)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{next(PORTS)}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("shard",))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("arch", ["bert", "t5", "llama", "qwen2", "mistral", "gemma3"])
def test_each_block_is_one_unit_checkpointed_and_the_keys_stay_those_of_the_model(arch: str, one_rank_mesh: Any) -> None:
    import copy

    from torch.distributed.fsdp import FSDPModule

    from tests.tuning.test_parts import MODELS
    from tunelab.fsdp import FSDP2Strategy
    from tunelab.tuning.parts import find_blocks

    torch.manual_seed(0)
    model = MODELS[arch][0]().eval()
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    strategy = FSDP2Strategy(activation_checkpointing=True)
    strategy._device_mesh = one_rank_mesh
    strategy.parallelize(model)
    strategy.parallelize(model)  # again (Lightning's configure_model before each stage): nothing changes
    blocks = [block for _, block in find_blocks(model)]
    assert len(blocks) == len(find_blocks(plain)) and all(isinstance(block, FSDPModule) for block in blocks)
    assert isinstance(model, FSDPModule) and sum(isinstance(m, FSDPModule) for m in model.modules()) == len(blocks) + 1
    assert list(model.state_dict()) == keys  # exports and checkpoints keep the model's own names
    runs = []  # forward passes of the first block's first linear layer
    next(m for m in blocks[0].modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(lambda *_: runs.append(1))
    inputs: dict[str, Any] = {"input_ids": torch.randint(3, 99, (2, 7))}
    if arch != "bert":  # as the task modules' loss passes: no key/value cache (its recomputation would differ)
        inputs["use_cache"] = False
    if arch == "t5":
        inputs["decoder_input_ids"] = torch.randint(3, 99, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits)
    runs.clear()
    model.train()
    model(**inputs).logits.sum().backward()
    assert len(runs) == 2  # the forward pass, then its recomputation in the backward pass
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
