"""Packing (task.data.packing=true): a batch's examples end to end in one row, with the same losses as padded."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from peft import PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.decoder_fixtures import tiny_decoder, tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.lm_fixtures import tiny_gpt2  # noqa: F401
from tests.seq2seq_fixtures import SEQ2SEQ_FAST, pairs_csv, tiny_t5  # noqa: F401
from tests.tasks.test_decoder_generation import decoder_overrides, setup_parts
from tunelab.batch import IGNORE_INDEX, META, model_inputs
from tunelab.data.packing import attends_across_packed_examples, check_packing_support
from tunelab.data.seq2seq import PROMPT_IDS
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.train import build_datamodule, run

pytestmark = pytest.mark.usefixtures("one_thread")


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Mean completion cross-entropy of one sequence's ``logits`` (each position predicts the next label)."""
    targets = labels[1:]
    keep = targets != IGNORE_INDEX
    return F.cross_entropy(logits[:-1][keep], targets[keep]).item()


def packed_and_padded(tmp_path: Path, model: Path, data: Path):
    """The same first training batch, padded and packed, and the model."""
    _, _, padded_data, module = setup_parts(tmp_path / "padded", model, data)
    _, _, packed_data, _ = setup_parts(tmp_path / "packed", model, data, "task.data.packing=true")
    features = [padded_data.features["train"][i] for i in range(6)]
    return padded_data.collate_fn()(features), packed_data.collate_fn()(features), module


def test_packed_per_example_losses_equal_the_padded_ones(tiny_decoder: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    assert_packed_equals_padded(tmp_path, tiny_decoder, pairs_csv)


def test_packed_losses_equal_the_padded_ones_with_absolute_positions(tiny_gpt2: Path, pairs_csv: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    assert_packed_equals_padded(tmp_path, tiny_gpt2, pairs_csv)


def assert_packed_equals_padded(tmp_path: Path, model: Path, data: Path) -> None:
    """Each example's completion loss in a packed row equals its loss in a right-padded batch, and so does the batch's."""
    padded, packed, module = packed_and_padded(tmp_path, model, data)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed  # one row, no padding
    assert packed["input_ids"].shape[1] == padded["attention_mask"].sum()
    assert torch.equal(packed[META][PROMPT_IDS], padded[META][PROMPT_IDS])  # generation reads the same prompts
    with torch.no_grad():
        padded_logits = module.model(**model_inputs(padded), use_cache=False).logits
        packed_logits = module.model(**model_inputs(packed), use_cache=False).logits[0]
        batch_losses = module(padded).loss.item(), module(packed).loss.item()
    alone, together = [], []
    starts = [*(packed["position_ids"][0] == 0).nonzero().flatten().tolist(), packed["input_ids"].shape[1]]
    assert len(starts) - 1 == len(padded["input_ids"])
    for i, (start, end) in enumerate(itertools.pairwise(starts)):
        length = int(padded["attention_mask"][i].sum())
        assert end - start == length
        assert torch.equal(packed["input_ids"][0, start:end], padded["input_ids"][i, :length])
        alone.append(example_losses(padded_logits[i, :length], padded["labels"][i, :length]))
        together.append(example_losses(packed_logits[start:end], packed["labels"][0, start:end]))
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(alone)) == len(alone)  # six different examples, not one repeated
    assert batch_losses[1] == pytest.approx(batch_losses[0], abs=1e-5)  # the mean over the batch's completion tokens


def test_prompt_tuning_attends_across_packed_examples_and_is_refused(tiny_llama: Path) -> None:  # noqa: F811
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not attends_across_packed_examples(model)
    check_packing_support(model)
    torch.manual_seed(0)
    prompted = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ConfigError, match=r"task.data.packing=true, but .* attends across the examples"):
        check_packing_support(prompted)


def test_packing_needs_a_decoder(tiny_t5: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", "task=parallel", f"task.data.source.data_files.train={pairs_csv}", "model=t5-small",
                        f"model.name_or_path={tiny_t5}", *SEQ2SEQ_FAST, "task.data.packing=true")
    with pytest.raises(ConfigError, match=r"task.data.packing=true needs a decoder .*encoder-decoder"):
        build_datamodule(cfg, load_tokenizer(cfg.model))


def test_a_packed_run_learns_with_every_token_real(tiny_llama: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    metrics = run(compose_train(out, *decoder_overrides(tiny_llama, pairs_csv, "trainer.max_epochs=6", "optimizer.lr=1e-2",
                                                          "task.data.packing=true")))
    frame = pd.read_csv(out / "logs" / "metrics.csv")
    val = frame.dropna(subset=["val/loss"])
    assert val["val/loss"].iloc[-1] < 0.5 * val["val/loss"].iloc[0]
    assert metrics["test"]["rougeL"] > 0.4
    speed = metrics["train"]
    assert speed["padding_efficiency"] == 1.0
    assert speed["train_samples"] == 6 * metrics["data"]["train"]  # examples counted, not packed rows


def test_a_packed_run_with_prompt_tuning_stops_before_training(tiny_llama: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = compose_train(tmp_path / "run", *decoder_overrides(tiny_llama, pairs_csv, "tuning=prompt", "task.data.packing=true"))
    with pytest.raises(ConfigError, match=r"task.data.packing=true, but .* attends across the examples"):
        run(cfg)


def test_a_token_budget_packs_rows_of_at_most_max_tokens_real_tokens(tiny_llama: Path, pairs_csv: Path,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """task.data.max_tokens with packing counts real tokens: each packed row is at most the budget, and
    every training example is in exactly one row."""
    _, _, datamodule, _ = setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.packing=true", "task.data.max_tokens=200")
    rows = list(datamodule.train_dataloader())
    assert all(row["input_ids"].shape == (1, row["input_ids"].shape[1]) and row["input_ids"].shape[1] <= 200
               for row in rows)
    assert sum(int((row["position_ids"] == 0).sum()) for row in rows) == len(datamodule.features["train"])
    assert sum(row["input_ids"].shape[1] for row in rows) == sum(datamodule.lengths["train"])
    assert max(row["input_ids"].shape[1] for row in rows) > 200 - max(datamodule.lengths["train"])  # filled up
