"""Every shipped yaml composes and instantiates: configs must not drift from code.

Hub models and datasets cannot be fetched here, so hub tasks are instantiated with their source
swapped for a local file of the same schema (columns, label names, split names), and hub models
are checked to fail fast with the offline message (see test_hub.py) while the task runs on the
tiny model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import make_rows
from tests.helpers import compose_train
from tunelab.config import CONFIG_DIR
from tunelab.errors import ConfigError
from tunelab.train import build_module, build_trainer, run

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
# Classification and regression tasks (other families have their own tests/test_configs_<family>.py).
TEXT_CLASSIFICATION_TASKS = sorted(
    p.stem for p in (CONFIG_DIR / "task").glob("*.yaml")
    if "_base/classification@" in p.read_text() or "_base/regression@" in p.read_text()
)
TUNINGS = sorted(p.stem for p in (CONFIG_DIR / "tuning").glob("*.yaml") if p.stem != "distill")
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
OFFLINE_MODELS = {"minilm", "tiny"}
OFFLINE_TASKS = {"bbc-news", "tweet-sentiment"}
SHORT = [
    "trainer.max_steps=2", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "progress=none",
    "trainer.num_sanity_val_steps=0", "task.data.max_samples={train: 64, validation: 32, test: 32}",
]

# Local stand-ins for Hub datasets: text columns, label names ("float" for scores), source splits.
HUB_SCHEMAS = {
    "sentiment": (["sentence"], ["negative", "positive"], ["train", "validation"]),
    "imdb": (["text"], ["neg", "pos"], ["train", "test"]),
    "ag_news": (["text"], ["World", "Sports", "Business", "Sci/Tech"], ["train", "test"]),
    "cola": (["sentence"], ["unacceptable", "acceptable"], ["train", "validation"]),
    "mrpc": (["sentence1", "sentence2"], ["not_equivalent", "equivalent"], ["train", "validation"]),
    "qqp": (["question1", "question2"], ["not_duplicate", "duplicate"], ["train", "validation"]),
    "qnli": (["question", "sentence"], ["entailment", "not_entailment"], ["train", "validation"]),
    "rte": (["sentence1", "sentence2"], ["entailment", "not_entailment"], ["train", "validation"]),
    "stsb": (["sentence1", "sentence2"], "float", ["train", "validation"]),
    "mnli": (["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
             ["train", "validation_matched", "validation_mismatched"]),
}
TRAIN_ROWS = {"ag_news": 5100, "sentiment": 1000, "qqp": 5100, "qnli": 5100, "mnli": 5100}


def test_every_group_option_is_covered() -> None:
    assert {"minilm", "tiny", "bert", "roberta", "distilbert", "deberta-v3", "bert-chinese"} <= set(MODELS)
    assert {"sentiment", "imdb", "ag_news", "tweet-sentiment", "bbc-news", "csv", "json"} <= set(TASKS)
    assert {"cola", "mrpc", "qqp", "mnli", "qnli", "rte", "stsb"} <= set(TASKS)
    assert {"full", "freeze", "head-only", "bitfit", "lora", "ia3", "prompt", "prefix", "ptuning", "adapter"} <= set(TUNINGS)
    for group in ("optimizer", "scheduler", "trainer", "logger", "tuning", "callbacks"):
        assert list((CONFIG_DIR / group).glob("*.yaml")), group


OWN_FILE = {t: ["task.data.source.data_files.train=/data/x.csv"] for t in ("csv", "json")}  # their train file is ???


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], DictConfig]:
    """Hydra compositions of every task (with the default model) and every model (with the default task)."""
    tmp = tmp_path_factory.mktemp("compose")
    return {**{("task", t): compose_train(tmp, f"task={t}", *OWN_FILE.get(t, [])) for t in TASKS},
            **{("model", m): compose_train(tmp, f"model={m}") for m in MODELS}}


def pair(composed: dict[tuple[str, str], DictConfig], model: str, task: str) -> DictConfig:
    """``model=<model> task=<task>`` without a Hydra composition per pair (432+ of them took minutes): the
    task's composition with the model group's node swapped in, which is what Hydra does for a model
    yaml (no defaults list, package ``model``). ``test_a_pair_equals_its_hydra_composition`` checks it."""
    cfg = composed[("task", task)].copy()
    with open_dict(cfg):
        cfg.model = composed[("model", model)].model
    return cfg


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", TASKS)
def test_every_model_task_pair_composes(composed: dict[tuple[str, str], DictConfig], model: str, task: str) -> None:
    cfg = pair(composed, model, task)
    assert cfg.model.name == model and cfg.task.name == task
    assert cfg.run_name == f"{task}-{model}-full"
    assert cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor
    # every interpolation of the task that reads the model (prefixes, architecture) resolves
    OmegaConf.to_container(cfg.task, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("model,task", [*((m, TASKS[i % len(TASKS)]) for i, m in enumerate(MODELS)),
                                        *((MODELS[i % len(MODELS)], t) for i, t in enumerate(TASKS))])
def test_a_pair_equals_its_hydra_composition(composed: dict[tuple[str, str], DictConfig], model: str, task: str,
                                             tmp_path: Path) -> None:
    hydra = compose_train(tmp_path, f"model={model}", f"task={task}", *OWN_FILE.get(task, []))
    swapped = pair(composed, model, task)
    for key in ("model", "task", "tuning", "optimizer"):
        assert OmegaConf.to_container(swapped[key]) == OmegaConf.to_container(hydra[key]), key
    assert swapped.run_name == hydra.run_name


@pytest.mark.parametrize(
    "group,option",
    [(g, p.stem) for g in ("optimizer", "scheduler", "logger", "trainer") for p in sorted((CONFIG_DIR / g).glob("*.yaml"))],
)
def test_every_optimizer_scheduler_logger_trainer_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"{group}={option}")
    if group == "trainer" and option == "gpu":
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
        return
    if group in ("logger", "trainer"):
        trainer = build_trainer(cfg, [])
        if group == "logger":
            assert len(trainer.loggers) == len(cfg.logger)
        return
    assert cfg[group]


def _fake_hub_task(task: str, tmp_path: Path) -> list[str]:
    columns, labels, splits = HUB_SCHEMAS[task]
    files = []
    for i, split in enumerate(splits):
        rows = make_rows(TRAIN_ROWS.get(task, 120) if split == "train" else 120, seed=i)
        if labels == "float":
            rows["label"] = rows["label"].map({"alpha": 0.5, "beta": 2.5, "gamma": 4.5})
        else:
            rows["label"] = rows["label"].map(dict(zip(["alpha", "beta", "gamma"], [labels[0], labels[1], labels[-1]], strict=True)))
        for column in columns:
            rows[column] = rows["text"]
        path = tmp_path / f"{split}.csv"
        rows[[*columns, "label"]].to_csv(path, index=False)
        files.append(f"{split}: {path}")
    return ["~task.data.source", "+task.data.source={_target_: tunelab.data.sources.load, path: csv, data_files: {" + ", ".join(files) + "}}"]


@pytest.mark.parametrize("task", TEXT_CLASSIFICATION_TASKS)
def test_every_task_instantiates_and_trains_a_step(task: str, tiny_bert: Path, tmp_path: Path) -> None:
    if task in HUB_SCHEMAS:
        extra = _fake_hub_task(task, tmp_path)
    elif task in ("csv", "json"):
        path = tmp_path / f"data.{task}"
        rows = make_rows(90)
        rows.to_csv(path, index=False) if task == "csv" else rows.to_json(path, orient="records", lines=True)
        extra = [f"task.data.source.data_files.train={path}"]
    else:
        extra = []
    if task == "imdb":
        extra.append("task.data.max_length=128")  # the tiny BERT has 128 positions (512 is refused up front)
    cfg = compose_train(tmp_path / "run", f"task={task}", "model=tiny", f"model.name_or_path={tiny_bert}", *SHORT, *extra)
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2
    if cfg.task.family == "regression":
        assert set(metrics["test"]) >= {"pearson", "spearman", "mse", "loss"}
    else:
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "mcc" in metrics["test"]
    if task == "mnli":
        assert set(metrics["test_mismatched"]) == set(metrics["test"]) and metrics["data"]["test_mismatched"] == 120


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs(experiment: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"experiment={experiment}", *SHORT)
    if cfg.task.data.get("few_shot", {}).get("k"):  # a k-shot set is small already, and a cap would unbalance it
        cfg = compose_train(tmp_path, f"experiment={experiment}", *SHORT, "task.data.max_samples.train=null",
                            "task.data.max_samples.validation=null")
    assert cfg.group == experiment
    metrics = run(cfg)
    assert metrics["train"]["steps"] == 2 and (tmp_path / "metrics.json").is_file()


class _Labels:
    def module_kwargs(self) -> dict:
        return {"labels": ["a", "b"]}


@pytest.mark.parametrize("model", sorted(OFFLINE_MODELS))
def test_offline_models_instantiate_for_real(model: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, f"model={model}")
    module = build_module(cfg, _Labels())
    counts = module.parameter_counts()
    if model == "minilm":
        assert 22_000_000 < counts["total"] < 23_000_000
    else:
        assert counts["total"] < 2_000_000 and module.model.config.num_hidden_layers == 2


@pytest.mark.parametrize("tuning", TUNINGS)
def test_every_tuning_preset_instantiates_on_minilm(tuning: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "model=minilm", f"tuning={tuning}")
    assert cfg.optimizer.lr == cfg.tuning.lr  # each preset carries its learning rate
    if tuning == "qlora" and not torch.cuda.is_available():  # its CPU run is tests/tuning/test_qlora.py
        with pytest.raises(ConfigError, match="tuning=qlora needs a CUDA GPU"):
            build_module(cfg, _Labels())
        return
    module = build_module(cfg, _Labels())
    pct = module.parameter_counts()["trainable_pct"]
    assert pct == 100 if tuning == "full" else pct < 100
    if tuning not in ("full", "freeze", "adapter", "qlora"):  # peft methods, bitfit, head-only: under 1%
        assert pct < 1.0, pct


def test_distill_preset_composes_with_any_student(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "tuning=distill", "tuning.teacher=some/teacher", "tuning/student=lora")
    assert cfg.tuning.name == "distill-lora" and cfg.optimizer.lr == cfg.tuning.student.lr


def test_json_task_reads_jsonl(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["x y"], "label": ["a"]})
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    cfg = compose_train(tmp_path, "task=json", f"task.data.source.data_files.train={tmp_path}/d.jsonl")
    assert cfg.task.data.source.path == "json"
