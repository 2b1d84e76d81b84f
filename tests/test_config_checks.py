"""Config values and keys are checked before any work (``tunelab.config_checks``): one ConfigError
naming the key, where a library traceback (or a silent misbehaviour) came after loading data before."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict
from transformers import AutoTokenizer

from tests.conftest import make_rows, tiny_overrides
from tests.helpers import compose_train
from tunelab.config import CONFIG_DIR
from tunelab.config_checks import accepted_arguments, check_against_model, check_config
from tunelab.errors import ConfigError

# Every option of the groups whose nodes have a _target_ (tasks and models compose in tests/test_configs*.py,
# whose training runs go through tunelab.train.run and so through check_config).
OPTIONS = [
    [f"{group}={p.stem}"] + (["tuning.teacher=runs/teacher"] if p.stem == "distill" else [])
    for group in ("optimizer", "trainer", "logger", "callbacks", "tuning", "experiment")
    for p in sorted((CONFIG_DIR / group).glob("*.yaml"))
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=lambda o: o[0])
def test_every_shipped_option_passes(overrides: list[str], tmp_path: Path) -> None:
    check_config(compose_train(tmp_path, "task=csv", "task.data.source.data_files.train=x.csv", *overrides))


@pytest.mark.parametrize("override,message", [
    ("+optimizer.learning_rate=1e-4", "optimizer.learning_rate is not an argument of torch.optim.AdamW; did you mean optimizer.lr?"),
    ("+task.data.batch_sise=8", "task.data.batch_sise is not an argument of tunelab.data.ClassificationDataModule; "
                                "did you mean task.data.batch_size?"),  # a **kwargs followed to TaskDataModule
    ("+trainer.max_epoch=3", "trainer.max_epoch is not an argument of lightning.pytorch.Trainer; did you mean trainer.max_epochs?"),
    ("+callbacks.early_stopping.patiance=1", "callbacks.early_stopping.patiance is not an argument of "
                                             "lightning.pytorch.callbacks.EarlyStopping; did you mean callbacks.early_stopping.patience?"),
    ("+logger.csv.save_directory=x", "logger.csv.save_directory is not an argument of tunelab.loggers.ResumableCSVLogger; "
                                     "did you mean logger.csv.save_dir?"),
    ("+task.module.zzz=1", "task.module.zzz is not an argument of tunelab.tasks.SequenceClassificationModule; it takes "
                           "labels, loss, model, optimizer, pretrained, scheduler, tuning"),
])
def test_misspelt_key_names_the_class_and_the_nearest_argument(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "task=csv", "task.data.source.data_files.train=x.csv", override)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == message


def test_keys_of_peft_configs_and_tuning_bases_are_checked(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "tuning=lora", "+tuning.peft.lora_alfa=8")
    with pytest.raises(ConfigError, match=r"^tuning.peft.lora_alfa is not an argument of peft.LoraConfig; did you mean "
                                          r"tuning.peft.lora_alpha\?$"):
        check_config(cfg)
    assert {"peft", "merge_on_export", "name", "lr", "l2sp", "unfreeze"} == accepted_arguments("tunelab.tuning.Peft")  # via TuningStrategy
    assert accepted_arguments("lightning.pytorch.loggers.WandbLogger") is None  # **kwargs to wandb.init: not checked
    assert accepted_arguments("tunelab.data.sources.load") is None  # **kwargs to datasets.load_dataset


@pytest.mark.parametrize("override,message", [
    ("task.data.batch_size=0", "task.data.batch_size must be a whole number >= 1, got 0"),
    ("task.data.batch_size=-8", "task.data.batch_size must be a whole number >= 1, got -8"),
    ("task.data.eval_batch_size=0", "task.data.eval_batch_size must be a whole number >= 1 or null, got 0"),
    ("task.data.max_length=0", "task.data.max_length must be a whole number >= 1, got 0"),
    ("task.data.max_length=-1", "task.data.max_length must be a whole number >= 1, got -1"),
    ("optimizer.lr=-1e-3", "optimizer.lr must be a number >= 0, got -0.001"),
    ("optimizer.lr=fast", "optimizer.lr must be a number >= 0, got 'fast'"),
    ("tuning.lr=-1", "optimizer.lr must be a number >= 0, got -1"),  # through ${tuning.lr}
    ("trainer.max_epochs=1.5", "trainer.max_epochs must be a whole number >= -1 (-1: no limit) or null, got 1.5"),
    ("trainer.max_steps=ten", "trainer.max_steps must be a whole number >= -1 (-1: no limit), got 'ten'"),
    ("task.data.val_size=0", "task.data.val_size must be a number of rows (>= 1) or a fraction of train (between 0 "
                             "and 1), got 0"),
    ("task.data.test_size=1.5", "task.data.test_size must be a number of rows (>= 1) or a fraction of train (between 0 "
                                "and 1), got 1.5"),
])
def test_bad_values_name_the_key(override: str, message: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "task=csv", "task.data.source.data_files.train=x.csv", override)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value) == message


def test_lengths_above_the_position_limit_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)  # model_max_length 128, max_position_embeddings 128
    cfg = compose_train(tmp_path, "task=csv", f"model.name_or_path={tiny_bert}", "task.data.max_length=128")
    check_against_model(cfg, tokenizer)
    cfg.task.data.max_length = 129
    with pytest.raises(ConfigError, match=r"^task.data.max_length=129 is above the model's position limit: "
                                          r"max_position_embeddings of the model config \(.*\) is 128; "
                                          r"use task.data.max_length=128 or less$"):
        check_against_model(cfg, tokenizer)
    with open_dict(cfg):  # a smaller model config limits, whatever the tokenizer says
        cfg.model.config_overrides = {"max_position_embeddings": 64}
    cfg.task.data.max_length = 100
    with pytest.raises(ConfigError, match=r"max_length=100 is above .*max_position_embeddings.* is 64"):
        check_against_model(cfg, tokenizer)
    tokenizer.model_max_length = int(1e30)  # "no limit": ignored
    cfg.model.config_overrides = {}
    cfg.task.data.max_length = 128
    check_against_model(cfg, tokenizer)
    tokenizer.model_max_length = 100
    with pytest.raises(ConfigError, match=r"model_max_length of the tokenizer \(.*\) is 100"):
        check_against_model(cfg, tokenizer)


def test_relative_positions_take_inputs_longer_than_the_tokenizer_declares(tmp_path: Path) -> None:
    """T5 (relative positions, no max_position_embeddings): a tokenizer's model_max_length of 512 does not
    bind, so the common max_length=1024 summarization recipe is not refused (transformers only warns)."""
    from transformers import T5Config

    from tests.seq2seq_fixtures import build_t5_tokenizer

    (tmp_path / "t5").mkdir()
    build_t5_tokenizer(tmp_path / "t5")
    T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(tmp_path / "t5")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t5")
    tokenizer.model_max_length = 512
    cfg = compose_train(tmp_path, "task=csv", f"model.name_or_path={tmp_path / 't5'}", "task.data.max_length=1024")
    check_against_model(cfg, tokenizer)


# --- through tunelab.train.run -----------------------------------------------------------------
@pytest.mark.parametrize("override,error", [
    ("+optimizer.learning_rate=1e-4", r"optimizer.learning_rate is not an argument of torch.optim.AdamW; did you mean "
                                      r"optimizer.lr\?"),  # was AdamW's TypeError, after the data was tokenized
    ("task.data.batch_size=0", r"task.data.batch_size must be a whole number >= 1, got 0"),  # was DataLoader's ValueError
])
def test_run_stops_before_any_work(override: str, error: str, compose_cfg, tiny_bert: Path, learnable_csv: Path,
                                   tmp_path: Path) -> None:
    from tunelab.train import run

    with pytest.raises(ConfigError, match=error):
        run(compose_cfg(*tiny_overrides(tiny_bert, learnable_csv, override)))
    assert not (tmp_path / "run").exists()  # no run folder, no status to clean up


def test_run_refuses_a_max_length_the_model_cannot_embed(compose_cfg, tiny_bert: Path, tmp_path: Path) -> None:
    """Texts longer than the model's 128 positions with task.data.max_length=200: an index error in the
    position embeddings at the first batch before; now a ConfigError once the tokenizer is loaded."""
    from tunelab.train import run

    rows = make_rows(60)
    rows["text"] = rows["text"].map(lambda t: " ".join([t] * 60))  # 180 words and more
    path = tmp_path / "long.csv"
    rows.to_csv(path, index=False)
    assert pd.read_csv(path)["text"].str.split().map(len).min() > 128
    with pytest.raises(ConfigError, match=r"task.data.max_length=200 is above the model's position limit"):
        run(compose_cfg(*tiny_overrides(tiny_bert, path, "task.data.max_length=200", "trainer.max_steps=1")))
