"""Generation metrics: ROUGE for summaries, SacreBLEU, chrF and chrF++ for translations.

ROUGE and SacreBLEU are torchmetrics'; chrF (``chrf``) and chrF++ (``chrf++``) are
``tunelab.metrics.chrf.CHRF``, equal to sacrebleu's ``CHRF()`` and ``CHRF(word_order=2)``.
Every metric state is a tensor (n-gram counts, per-example scores), so torchmetrics syncs them
across DDP ranks; no text is kept. Scores are on the 0-1 scale (sacrebleu and papers print x100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore
from torchmetrics.utilities import dim_zero_cat

from tunelab.errors import ConfigError
from tunelab.metrics.chrf import CHRF
from tunelab.metrics.qa import exact_match, f1_score, percent

GENERATION_METRICS = ("rouge", "sacrebleu", "chrf", "chrf++", "squad")  # "chrf++" parses unquoted in Hydra overrides
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
        "squad": GeneratedAnswerScore,
    }
    metrics: dict[str, Metric] = {name: factories[name]() for name in names}
    metrics[GEN_LEN] = MeanMetric()
    return MetricCollection(metrics, compute_groups=False)


class GeneratedAnswerScore(Metric):
    """SQuAD exact match and F1 (percent, the official script's normalisation and averaging in float64) of
    generated answers, each against all its gold answers; an empty gold list is SQuAD 2.0's no answer."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("em", default=[], dist_reduce_fx="cat")
        self.add_state("f1", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
        self.em.append(torch.tensor([exact_match(p, a) for p, a in zip(predictions, answers, strict=True)],
                                    dtype=torch.float64, device=self.device))
        self.f1.append(torch.tensor([f1_score(p, a) for p, a in zip(predictions, answers, strict=True)],
                                    dtype=torch.float64, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        if not self.em:
            return {"exact_match": torch.tensor(0.0, dtype=torch.float64), "f1": torch.tensor(0.0, dtype=torch.float64)}
        return {"exact_match": percent(dim_zero_cat(self.em)), "f1": percent(dim_zero_cat(self.f1))}


def update_generation_metrics(
    metrics: MetricCollection, predictions: list[str], references: list[str], generated_lengths: torch.Tensor,
    all_references: list[list[str]] | None = None,
) -> None:
    """Score ``predictions`` against one reference each (``squad``: against ``all_references``, every gold answer)."""
    for name, metric in metrics.items(keep_base=True):
        if name == GEN_LEN:
            metric.update(generated_lengths.float())
        elif name == "squad":
            metric.update(predictions, all_references if all_references is not None else [[r] for r in references])
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
