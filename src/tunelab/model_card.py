"""The model card of an export, ``model/README.md``, as the Hugging Face Trainer writes one: Hub metadata
(library, base model, datasets, tags, the test metrics as a model-index) and a text saying what was
tuned, how and how well, with the exact command and the code's version and commit."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from omegaconf import DictConfig

from tunelab import assets
from tunelab.exported import read_export_info

# Hub pipeline tag by the model class an export reloads with (seq2seq: see ``pipeline_tag``)
PIPELINES = {
    "SequenceClassification": "text-classification",
    "TokenClassification": "token-classification",
    "QuestionAnswering": "question-answering",
    "MaskedLM": "fill-mask",
    "CausalLM": "text-generation",
}
PACKAGES_SHOWN = ("torch", "lightning", "transformers", "peft", "datasets")


def hub_model_id(name_or_path: str) -> str | None:
    """The Hub id of a model given by name or folder: the name itself, the Hub original of the offline
    MiniLM asset, or ``None`` for another local folder (the Hub's ``base_model`` must be a Hub id)."""
    if not Path(name_or_path).exists():
        return name_or_path
    return assets.MINILM_HUB_NAME if name_or_path == assets.minilm() else None


def hub_dataset(cfg: DictConfig) -> tuple[str, str | None] | None:
    """``(dataset id, config name)`` for a task read from the Hub; ``None`` for local files."""
    source = cfg.task.data.get("source") or {}
    if source.get("data_files") is not None or not source.get("path") or Path(str(source.path)).exists():
        return None
    return str(source.path), source.get("name")


def pipeline_tag(auto_class: str, cfg: DictConfig) -> str | None:
    name = auto_class.rsplit(".", 1)[-1]
    if "Seq2SeqLM" in name or "EncoderDecoder" in name:
        return "translation" if cfg.task.data.get("target_lang") or cfg.task.data.get("translation_column") else "summarization"
    return next((tag for part, tag in PIPELINES.items() if part in name), None)


def library(path: Path) -> str | None:
    """What loads the export: peft (an adapter) or transformers (a whole model); ``None`` for tunelab's
    own bottleneck adapters, which only ``tunelab.exported.load_run_model`` loads."""
    if (path / "adapter_config.json").is_file():
        return "peft"
    if any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return "transformers"
    return None


def base_models(cfg: DictConfig) -> list[str]:
    """The pretrained checkpoints the model starts from, as given (names or folders)."""
    if cfg.model.get("encoder_decoder"):
        return list(dict.fromkeys([str(cfg.model.encoder_decoder.encoder), str(cfg.model.encoder_decoder.decoder)]))
    return [str(cfg.model.name_or_path)]


def test_results(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{"test": {"accuracy": 0.9, ...}, "test_mismatched": {...}}``: every test set's numbers."""
    return {
        split: {k: v for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for split, values in metrics.items()
        if (split == "test" or split.startswith("test_")) and isinstance(values, dict)
    }


def card_data(path: Path, cfg: DictConfig, metrics: dict[str, Any], auto_class: str) -> ModelCardData:
    """The card's metadata block."""
    task_type = pipeline_tag(auto_class, cfg)
    dataset = hub_dataset(cfg)
    splits = cfg.task.data.get("splits") or {}
    from_scratch = bool(cfg.model.get("from_scratch"))
    hub_ids = [] if from_scratch else [i for i in map(hub_model_id, base_models(cfg)) if i]
    results = [
        EvalResult(
            task_type=task_type or str(cfg.task.name), dataset_type=dataset[0] if dataset else str(cfg.task.name),
            dataset_name=str(cfg.task.name), dataset_config=dataset[1] if dataset else None,
            dataset_split=str(splits.get(split, split)), metric_type=name, metric_name=f"{split} {name}",
            metric_value=value,
        )
        for split, values in test_results(metrics).items()
        for name, value in values.items()
        if math.isfinite(value)
    ]
    return ModelCardData(
        library_name=library(path),
        base_model=(hub_ids[0] if len(hub_ids) == 1 else hub_ids) or None,
        datasets=[dataset[0]] if dataset else None,
        pipeline_tag=task_type,
        tags=["tunelab", f"tuning-{cfg.tuning.name}", str(cfg.task.name)],
        model_name=str(cfg.run_name),
        eval_results=results or None,
    )


def _code(environment: dict[str, Any]) -> str:
    packages = environment.get("packages") or {}
    git = environment.get("git") or {}
    commit = f"commit `{git['commit']}`" if git.get("commit") else "no git commit recorded"
    if git.get("dirty"):
        commit += " with uncommitted changes"
    others = ", ".join(f"{name} {packages[name]}" for name in PACKAGES_SHOWN if packages.get(name))
    return f"tunelab {packages.get('tunelab') or 'unknown'}, {commit}; {others}."


def card_text(cfg: DictConfig, metrics: dict[str, Any], environment: dict[str, Any], info: dict[str, Any],
              library_name: str | None) -> str:
    """The card's Markdown body."""
    revision = cfg.model.get("revision")
    base = ", ".join(f"`{b}`" for b in base_models(cfg)) + (f" (revision `{revision}`)" if revision else "")
    if cfg.model.get("from_scratch"):
        base = f"none: trained from scratch, with the architecture of {base}"
    params = metrics.get("params") or {}
    tuning = (f"`{cfg.tuning.name}`: {params['trainable']:,} of {params['total']:,} parameters trained "
              f"({params['trainable_pct']}%)") if params else f"`{cfg.tuning.name}`"
    id2label = info["config_kwargs"].get("id2label") or {}
    train = metrics.get("train") or {}
    rows = [
        ("base model", base),
        ("task", f"`{cfg.task.name}` ({pipeline_tag(info['auto_class'], cfg) or 'other'})"),
        *([("labels", ", ".join(f"`{id2label[i]}`" for i in sorted(id2label)))] if id2label else []),
        ("tuning", tuning),
        ("data", ", ".join(f"{split} {n:,}" for split, n in (metrics.get("data") or {}).items())),
        ("training", f"{train.get('epochs', '?')} epochs, {train.get('steps', '?')} steps, seed {cfg.seed}, "
                     f"lr {cfg.optimizer.get('lr')}, batch size {cfg.task.data.get('batch_size')}"),
    ]
    results = "\n".join(f"| {split} | {name} | {json.dumps(value)} |"
                        for split, values in test_results(metrics).items() for name, value in values.items())
    auto = info["auto_class"].rsplit(".", 1)[-1]
    load = {"peft": f"`peft.PeftModel.from_pretrained({auto}.from_pretrained(<base model>, ...), <this folder>)`",
            "transformers": f"`transformers.{auto}.from_pretrained(<this folder>)`"}.get(library_name, "")
    command = shlex.join(str(part) for part in environment.get("command") or [])
    return "\n".join([
        f"# {cfg.run_name}",
        "",
        "Fine-tuned with tunelab (Lightning + Hugging Face + Hydra); the run folder holds its config, metrics and logs.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        "## Test results",
        "",
        f"The best checkpoint (by `{cfg.task.get('monitor')}` on validation) on each test set, as in the run's `metrics.json`.",
        "",
        "| test set | metric | value |",
        "|---|---|---:|",
        results,
        "",
        "## Reproduce",
        "",
        f"From `{environment.get('cwd', '.')}`:",
        "",
        "```bash",
        command,
        "```",
        "",
        _code(environment),
        "",
        "## Load",
        "",
        f"{load + ', or ' if load else ''}`tunelab.exported.load_run_model(<run folder>)` for any tuning method.",
        "",
    ])


def write_model_card(path: str | Path, cfg: DictConfig, metrics: dict[str, Any], environment: dict[str, Any]) -> None:
    """Write ``README.md`` into the export folder ``path`` (after the model and its ``tunelab.json``:
    the labels and the model class come from there), replacing the card peft writes for adapters.
    ``metrics`` is what ``metrics.json`` holds, ``environment`` what ``environment.json`` holds."""
    path = Path(path)
    info = read_export_info(path)
    data = card_data(path, cfg, metrics, info["auto_class"])
    text = card_text(cfg, metrics, environment, info, data.library_name)
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}").save(path / "README.md")
