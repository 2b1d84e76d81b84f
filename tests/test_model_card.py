"""Every export carries a model card (``model/README.md``) that explains it on the Hub."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from omegaconf import DictConfig

from tests.conftest import CLASSES, tiny_overrides
from tests.helpers import compose_train
from tunelab import assets
from tunelab.model_card import card_data, hub_model_id
from tunelab.train import run


def results_of(card: ModelCard) -> dict[tuple[str, str], float]:
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


def finite_test_metrics(metrics: dict) -> dict[tuple[str, str], float]:
    """What the model-index holds: the test metrics of metrics.json, less any NaN (which the Hub refuses)."""
    return {("test", name): value for name, value in metrics["test"].items() if math.isfinite(value)}


def test_export_has_a_card_with_model_task_tuning_metrics_command_and_commit(finished_run: tuple[Path, dict]) -> None:
    run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    environment = json.loads((run_dir / "environment.json").read_text())
    card = ModelCard.load(run_dir / "model" / "README.md")

    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert {"tunelab", "tuning-full", "csv"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is no Hub id; the text names it
    assert results_of(card) == finite_test_metrics(metrics)

    text = card.text
    model_path = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name_or_path"]
    assert f"| base model | `{model_path}` |" in text
    assert "| task | `csv` (text-classification) |" in text
    assert "| labels | " + ", ".join(f"`{c}`" for c in CLASSES) + " |" in text
    params = metrics["params"]
    assert f"`full`: {params['trainable']:,} of {params['total']:,} parameters trained ({params['trainable_pct']}%)" in text
    for name, value in metrics["test"].items():
        assert f"| test | {name} | {json.dumps(value)} |" in text
    assert shlex.join(environment["command"]) in text
    commit = environment["git"]["commit"]
    assert (f"commit `{commit}`" if commit else "no git commit recorded") in text
    assert f"tunelab {environment['packages']['tunelab']}" in text


def test_peft_export_card_replaces_peft_template(tiny_bert: Path, learnable_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    metrics = run(compose_train(out, *tiny_overrides(
        tiny_bert, learnable_csv, "tuning=lora", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2")))
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.library_name == "peft" and "tuning-lora" in card.data.tags
    assert "More Information Needed" not in card.text  # peft's own template, which the export used to carry
    assert f"({metrics['params']['trainable_pct']}%)" in card.text
    assert results_of(card) == finite_test_metrics(metrics)


def test_hub_model_and_dataset_in_metadata(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """A Hub model and dataset are named in the metadata; every test set becomes a model-index entry
    with the source split it is (MNLI: matched and mismatched validation sets)."""
    cfg = compose_cfg("model=bert", "task=mnli")
    metrics = {"test": {"accuracy": 0.84}, "test_mismatched": {"accuracy": 0.83}, "val": {"accuracy": 0.9}}
    data = card_data(tmp_path, cfg, metrics, "transformers.AutoModelForSequenceClassification")
    assert data.base_model == "bert-base-uncased" and data.datasets == ["nyu-mll/glue"]
    results = {(r.dataset_split, r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("validation_matched", "mnli", "accuracy"): 0.84, ("validation_mismatched", "mnli", "accuracy"): 0.83}
    assert hub_model_id(assets.minilm()) == assets.MINILM_HUB_NAME  # the offline MiniLM is a copy of the Hub one
