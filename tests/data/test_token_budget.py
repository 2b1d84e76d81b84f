"""task.data.max_tokens: training batches cut by a budget of fed tokens, fixed across epochs, shuffled per
(seed, epoch), split evenly across ranks; each example's loss in such a batch is its loss alone; a run with
them learns and resumes mid-epoch to the uninterrupted run's step losses."""

from __future__ import annotations

import itertools
import json
import random
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from tests.conftest import tiny_overrides
from tests.helpers import compose_train
from tests.mc_fixtures import mc_overrides, toy_rows, write_jsonl
from tests.test_run_identity import _step_losses
from tunelab import train
from tunelab.data.token_budget import TokenBudgetBatchSampler, budget_batches, packed_cost, padded_cost
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.requeue import Requeued, ResumeCallback
from tunelab.train import build_datamodule, run

pytestmark = pytest.mark.usefixtures("one_thread")

_rng = random.Random(0)
LENGTHS = [_rng.randint(3, 40) for _ in range(200)] + [41]  # one longest example, the last


@pytest.mark.parametrize("cost", [padded_cost(), padded_cost(8), padded_cost(width=4), packed_cost])
def test_batches_hold_every_example_once_and_are_as_full_as_the_budget_allows(cost) -> None:
    batches = budget_batches(LENGTHS, 320, cost, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))

    def fed(batch: list[int]) -> int:
        return cost(len(batch), max(LENGTHS[i] for i in batch), sum(LENGTHS[i] for i in batch))

    assert all(fed(b) <= 320 for b in batches)
    for batch, after in itertools.pairwise(batches):  # the next example would not have fit
        assert fed([*batch, after[0]]) > 320
    padded = padded_cost()
    if cost is padded:  # the budget by hand: examples x longest
        assert all(len(b) * max(LENGTHS[i] for i in b) <= 320 for b in batches)
        assert len(batches[0]) > len(batches[-1])  # short examples: more of them per batch


def test_padded_cost_rounds_up_to_the_padding_multiple_and_counts_choices() -> None:
    assert padded_cost()(3, 10, 21) == 30
    assert padded_cost(8)(3, 10, 21) == 48  # padded to 16
    assert padded_cost(None, width=4)(3, 10, 21) == 120
    assert packed_cost(3, 10, 21) == 21


def test_a_budget_below_one_example_is_refused_with_the_key() -> None:
    longest = max(LENGTHS)
    with pytest.raises(ConfigError, match=rf"task\.data\.max_tokens={longest - 1} is smaller than one training "
                                          rf"example: example {LENGTHS.index(longest)} alone feeds {longest} tokens"):
        budget_batches(LENGTHS, longest - 1, padded_cost(), seed=0)
    with pytest.raises(ConfigError, match=r"task\.data\.max_tokens must be a positive"):
        budget_batches(LENGTHS, 0, padded_cost(), seed=0)


def test_the_same_batches_each_epoch_in_an_order_fixed_per_seed_and_epoch() -> None:
    sampler = TokenBudgetBatchSampler(LENGTHS, 256, padded_cost(), seed=3)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(map(tuple, epoch1)) == sorted(map(tuple, epoch0))
    again = TokenBudgetBatchSampler(LENGTHS, 256, padded_cost(), seed=3)
    again.set_epoch(1)
    assert list(again) == epoch1
    assert list(TokenBudgetBatchSampler(LENGTHS, 256, padded_cost(), seed=4)) != epoch0


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_disjoint_batches_and_run_the_same_number_of_steps(world: int) -> None:
    ranks = [TokenBudgetBatchSampler(LENGTHS, 256, padded_cost(), seed=3, num_replicas=world, rank=r)
             for r in range(world)]
    batches = [list(s) for s in ranks]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(ranks[0])
    every = sorted(tuple(b) for rank in batches for b in rank)
    whole = sorted(tuple(b) for b in TokenBudgetBatchSampler(LENGTHS, 256, padded_cost(), seed=3))
    assert set(every) == set(whole)  # every batch, the few repeated ones padding the last step
    assert len(every) - len(whole) == (-len(whole)) % world


def test_one_batch_is_shared_out_to_every_rank() -> None:
    ranks = [list(TokenBudgetBatchSampler([5, 6], 100, padded_cost(), num_replicas=4, rank=r)) for r in range(4)]
    assert ranks == [[[0, 1]]] * 4


def _datamodule(tiny_bert: Path, learnable_csv: Path, tmp_path: Path, *extra: str):
    cfg = compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, *extra))
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    return datamodule


def test_training_batches_fit_the_budget_and_each_examples_loss_is_its_loss_alone(
        tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    datamodule = _datamodule(tiny_bert, learnable_csv, tmp_path, "task.data.max_tokens=96")
    loader = datamodule.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    assert all(b["input_ids"].numel() <= 96 for b in batches)
    sizes = [b["input_ids"].shape[0] for b in batches]
    assert max(sizes) > min(sizes)  # the examples per batch follow their lengths
    assert sum(sizes) == len(datamodule.features["train"])

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3,
                                                               ignore_mismatched_sizes=True).eval()
    with torch.no_grad():
        for batch in batches[:: max(1, len(batches) // 4)]:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            together = F.cross_entropy(model(**inputs).logits, batch["labels"], reduction="none")
            for i, mask in enumerate(batch["attention_mask"]):
                alone = {k: v[i : i + 1, : int(mask.sum())] for k, v in inputs.items()}  # unpadded
                loss = F.cross_entropy(model(**alone).logits, batch["labels"][i : i + 1])
                torch.testing.assert_close(together[i], loss, rtol=1e-5, atol=1e-6)


def test_multiple_choice_budget_counts_every_choice(tiny_bert: Path, tmp_path: Path) -> None:
    train_file = write_jsonl(toy_rows(60), tmp_path / "mc.jsonl")
    cfg = compose_train(tmp_path / "run", *mc_overrides(tiny_bert, train_file, "task.data.max_tokens=256"))
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert all(b["input_ids"].dim() == 3 and b["input_ids"].numel() <= 256 for b in batches)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(datamodule.features["train"])


def test_a_token_budget_run_learns_and_resumes_mid_epoch_to_the_same_step_losses(
        tiny_bert: Path, learnable_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = tiny_overrides(tiny_bert, learnable_csv, "task.data.max_tokens=256", "trainer.max_epochs=3")
    straight = run(compose_train(tmp_path / "straight", *overrides))
    steps_per_epoch = len(_datamodule(tiny_bert, learnable_csv, tmp_path / "dm", "task.data.max_tokens=256")
                          .train_dataloader())
    assert straight["train"]["steps"] == 3 * steps_per_epoch
    assert straight["test"]["accuracy"] > 0.8  # three topics: chance is 1/3
    losses = _step_losses(tmp_path / "straight")
    assert sum(list(losses.values())[-5:]) < sum(list(losses.values())[:5])

    out = tmp_path / "resumed"
    requeue_at = steps_per_epoch + steps_per_epoch // 2  # mid-epoch 1
    with monkeypatch.context() as patch:
        patch.setattr(train, "ResumeCallback", lambda requeue_signal: ResumeCallback(signal.SIGUSR1))
        with pytest.raises(Requeued):
            run(compose_train(out, *overrides, "+callbacks.signal._target_=tests.test_run_identity.SignalAt",
                              f"+callbacks.signal.step={requeue_at}"))
    resumed = run(compose_train(out, *overrides))
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert resumed["train"]["steps"] == straight["train"]["steps"]
    assert _step_losses(out) == pytest.approx(losses, rel=1e-4)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5)


def test_max_tokens_must_be_a_whole_number(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task\.data\.max_tokens must be a whole number >= 1 or null"):
        run(compose_train(tmp_path / "run", *tiny_overrides(tiny_bert, learnable_csv, "task.data.max_tokens=0.5")))
