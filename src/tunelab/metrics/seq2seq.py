"""Generation metrics: ROUGE for summaries, SacreBLEU, chrF and chrF++ for translations.

ROUGE and SacreBLEU are torchmetrics'; chrF (``chrf``) and chrF++ (``chrf++``) are
``tunelab.metrics.chrf.CHRF``, equal to sacrebleu's ``CHRF()`` and ``CHRF(word_order=2)``.
Every metric state is a tensor (n-gram counts, per-example scores), so torchmetrics syncs them
across DDP ranks; no text is kept. Scores are on the 0-1 scale (sacrebleu and papers print x100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from tunelab.errors import ConfigError
from tunelab.metrics.chrf import CHRF

GENERATION_METRICS = ("rouge", "sacrebleu", "chrf", "chrf++")  # "chrf++" parses unquoted in Hydra overrides
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
GEN_LEN = "gen_len"  # mean generated length in tokens


def check_rouge_lsum(rouge_keys: Sequence[str]) -> None:
    """ROUGE-Lsum splits sentences with nltk's punkt tables, which torchmetrics downloads on first
    use: offline that fails mid-validation, so check at start-up instead."""
    if "rougeLsum" not in rouge_keys:
        return
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        raise ConfigError(
            "ROUGE-Lsum (task.module.rouge_keys) needs nltk's punkt sentence splitter, which is not installed: "
            "run `python -m nltk.downloader punkt_tab` (with internet, or copy nltk_data/ from a machine that has it), "
            "or drop rougeLsum from task.module.rouge_keys"
        ) from None


def generation_metrics(names: Sequence[str], rouge_keys: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> MetricCollection:
    """``names`` from ``GENERATION_METRICS``; ROUGE reports the F-measure of each of ``rouge_keys``."""
    unknown = [n for n in names if n not in GENERATION_METRICS]
    if unknown or not names:
        raise ConfigError(f"task.module.metrics: unknown {unknown or 'empty list'}; choose from {list(GENERATION_METRICS)}")
    bad_keys = [k for k in rouge_keys if k not in ROUGE_KEYS]
    if bad_keys or ("rouge" in names and not rouge_keys):
        raise ConfigError(f"task.module.rouge_keys: unknown {bad_keys or 'empty list'}; choose from {list(ROUGE_KEYS)}")
    if "rouge" in names:
        check_rouge_lsum(rouge_keys)
    factories = {
        "rouge": lambda: ROUGEScore(rouge_keys=tuple(rouge_keys)),
        "sacrebleu": lambda: SacreBLEUScore(tokenize="13a"),
        "chrf": lambda: CHRF(),
        "chrf++": lambda: CHRF(word_order=2),
    }
    metrics: dict[str, Metric] = {name: factories[name]() for name in names}
    metrics[GEN_LEN] = MeanMetric()
    return MetricCollection(metrics, compute_groups=False)


def update_generation_metrics(
    metrics: MetricCollection, predictions: list[str], references: list[str], generated_lengths: torch.Tensor
) -> None:
    """Score ``predictions`` against one reference each."""
    for name, metric in metrics.items(keep_base=True):
        if name == GEN_LEN:
            metric.update(generated_lengths.float())
        elif name == "rouge":
            metric.update(predictions, references)
        else:
            metric.update(predictions, [[ref] for ref in references])


def generation_metric_values(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Flat names: ``rouge1`` (F-measure; precision and recall are left out), ``sacrebleu``, ``chrf``,
    ``chrf++``, ``gen_len``."""
    out = {}
    for key, value in values.items():
        if key.endswith(("_precision", "_recall")):
            continue
        out[key.removesuffix("_fmeasure")] = value.item()
    return out
