"""Language modelling: masked (``AutoModelForMaskedLM``) and causal (``AutoModelForCausalLM``).

Both report perplexity, exp of the token-weighted mean loss of the epoch, from the model's own loss
(no logits kept). ``predict`` scores each row of a file: its target tokens and perplexity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from tunelab.batch import IGNORE_INDEX, META
from tunelab.errors import ConfigError, TunelabError
from tunelab.metrics.lm import lm_metrics
from tunelab.models import load_config
from tunelab.tasks.base import NO_KV_CACHE, TaskModule


class LanguageModelModule(TaskModule):
    """Shared by MLM and CLM; subclasses set the objective, Auto class and label ``shift``.

    Args:
        objective: the datamodule's objective (``task.data.objective``), checked against this module's.
        **kwargs: see ``TaskModule``.
    """

    objective: str
    shift: int  # position offset between a logit and its label: 1 for causal LMs, 0 for masked

    def __init__(self, model: Mapping[str, Any], optimizer: Mapping[str, Any], objective: str | None = None, **kwargs: Any):
        super().__init__(model=model, optimizer=optimizer, **kwargs)

    def config_kwargs(self) -> dict[str, Any]:
        objective = self.hparams.objective
        if objective is not None and objective != self.objective:
            raise ConfigError(
                f"task.data.objective={objective} but the task module {type(self).__name__} trains '{self.objective}': "
                f"use task=mlm or task=clm (or set task.data.objective={self.objective})"
            )
        if not self.pretrained:
            self.check_model(load_config(self.model_cfg))
        return {}

    def check_model(self, config: PretrainedConfig) -> None:
        """Refuse models whose head exists but would train the wrong thing (pairings without a
        head at all are refused by ``models.check_pairing``)."""

    def build_metrics(self) -> MetricCollection:
        return lm_metrics()

    def target_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """Number of predicted tokens: the weight of the batch's mean loss."""
        return (labels[:, self.shift :] != IGNORE_INDEX).sum()

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, torch.Tensor], stage: str) -> None:
        metrics.update(outputs.loss.detach().float(), self.target_tokens(batch["labels"]))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per block: summed negative log-likelihood and number of target tokens (and its row)."""
        labels = batch["labels"]
        length = labels.size(1)
        logits = self(batch).logits[:, -length:]  # prompt-tuning methods prepend virtual tokens
        logits, labels = logits[:, : length - self.shift], labels[:, self.shift :]
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        return {"nll": nll.sum(-1), "tokens": (labels != IGNORE_INDEX).sum(-1), "row": batch.get(META, {}).get("row")}

    def predictions_table(self, batches: list[dict[str, Any]], order: list[int]) -> dict[str, list]:
        """Per input row: target tokens scored and perplexity (empty when no token was scored)."""
        if any(b["row"] is None for b in batches):
            raise TunelabError("per-row scores need blocks cut per row (task.data.group_texts=false)")
        rows = torch.tensor([r for b in batches for r in b["row"]])
        n = int(rows.max()) + 1 if len(rows) else 0
        nll = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, torch.cat([b["nll"] for b in batches]).double())
        tokens = torch.zeros(n, dtype=torch.long).index_add_(0, rows, torch.cat([b["tokens"] for b in batches]))
        perplexity = torch.where(tokens > 0, torch.exp(nll / tokens.clamp(min=1)), torch.nan)
        return {"tokens": tokens.tolist(), "perplexity": perplexity.tolist()}


class MaskedLMModule(LanguageModelModule):
    """Masked language modelling (BERT-style encoders); the export loads as the ``model=`` of a
    later classification run (domain-adaptive pre-training)."""

    auto_model_class = AutoModelForMaskedLM
    objective = "mlm"
    shift = 0


class CausalLMModule(LanguageModelModule):
    """Causal (next-token) language modelling with decoders such as GPT-2."""

    auto_model_class = AutoModelForCausalLM
    objective = "clm"
    shift = 1
    forward_kwargs = NO_KV_CACHE

    def check_model(self, config: PretrainedConfig) -> None:
        encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_encoder_decoder
        if encoder and not config.is_decoder:
            name = self.model_cfg.get("name", self.model_cfg["name_or_path"])
            raise ConfigError(
                f"model '{name}' ({config.model_type}) is a bidirectional encoder: its causal-LM head would see "
                f"the tokens it must predict. Use task=mlm for encoders and a decoder (e.g. model=gpt2) for "
                f"task=clm, or set model.config_overrides.is_decoder=true to train it as a causal decoder on purpose"
            )
