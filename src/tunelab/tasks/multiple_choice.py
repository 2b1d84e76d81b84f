"""Multiple choice with ``AutoModelForMultipleChoice``: one score per (context, ending) pair, a softmax
over a row's endings; accuracy is the share of rows whose best-scored ending is the correct one.

PEFT has no task type for multiple choice, so nothing in ``peft`` keeps the new head trainable and
saved: the head's modules (those outside the pretrained backbone) are put in the adapter's
``modules_to_save`` here, which ``PeftModel.from_pretrained`` restores. Prompt-learning methods
(prompt, prefix, P-tuning) are refused: without a task type ``peft`` does not insert their virtual
tokens at all, and its task wrappers take (batch, length) inputs, not (batch, choices, length).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftModel
from peft.utils import set_additional_trainable_modules
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForMultipleChoice

from tunelab.batch import META, model_inputs
from tunelab.errors import ConfigError
from tunelab.tasks.base import TaskModule, in_row_order
from tunelab.tuning import Peft
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.parts import head_parameter_names

ALTERNATIVES = "tuning=lora, ia3, adapter, bitfit, freeze, head-only or full"


def refuse_prompt_learning(strategy: TuningStrategy) -> None:
    """A ConfigError naming the tuning when it (or a distillation student) is a peft prompt-learning method."""
    inner = getattr(strategy, "student", strategy)
    if isinstance(inner, Peft) and inner.peft_config.is_prompt_learning:
        raise ConfigError(
            f"tuning={strategy.name} ({type(inner.peft_config).__name__}) does not work with multiple choice: peft "
            f"prepends virtual tokens only for the task types it knows, and has none for multiple choice, whose "
            f"inputs are (batch, choices, length); use {ALTERNATIVES} instead"
        )


def save_head(model: PeftModel) -> None:
    """Put the task head (modules outside the backbone, e.g. BERT's ``classifier``) in the active adapter's
    ``modules_to_save``: trained, saved with the adapter and restored by ``PeftModel.from_pretrained``."""
    config = model.peft_config[model.active_adapter]
    base = model.get_base_model()
    head = sorted({name.split(".")[0] for name in head_parameter_names(base)})
    missing = [m for m in head if m not in (config.modules_to_save or [])]
    if missing:
        config.modules_to_save = [*(config.modules_to_save or []), *missing]
        set_additional_trainable_modules(base, config, base.config, model.active_adapter)


class MultipleChoiceModule(TaskModule):
    """Picks one of ``num_choices`` endings per row.

    Args:
        num_choices: endings per row (the datamodule's), the classes of the accuracy.
        num_samples: test rows (the first ones) written to ``samples/<test set>.jsonl``.
    """

    auto_model_class = AutoModelForMultipleChoice

    def __init__(self, num_choices: int, model: Mapping[str, Any], optimizer: Mapping[str, Any],
                 num_samples: int = 100, **kwargs: Any):
        super().__init__(model=model, optimizer=optimizer, **kwargs)

    def config_kwargs(self) -> dict[str, Any]:
        refuse_prompt_learning(self.tuning)
        return {}

    def build(self, **config_kwargs: Any) -> None:
        super().build(**config_kwargs)
        if isinstance(self.model, PeftModel) and not self.pretrained:  # a loaded export has its head saved
            save_head(self.model)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"accuracy": MulticlassAccuracy(num_classes=self.hparams.num_choices, average="micro")})

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        metrics.update(outputs.logits.argmax(-1), batch["labels"])
        if self.trainer.testing and self.hparams.num_samples:
            self._keep_samples(stage, outputs.logits, batch)

    # --- test samples ---------------------------------------------------------------------------
    def _keep_samples(self, stage: str, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        meta = batch[META]
        confidence, predicted = logits.float().softmax(-1).max(-1)
        self.add_samples(stage, [
            {"row": row, "context": meta["context"][i], "choices": meta["choices"][i],
             "gold": int(batch["labels"][i]), "predicted": int(predicted[i]), "confidence": float(confidence[i])}
            for i, row in enumerate(meta["example_id"]) if row < self.hparams.num_samples
        ])

    def on_test_epoch_end(self) -> None:
        for rows in self.test_samples.values():  # evaluation runs longest first: back to row order
            rows.sort(key=lambda sample: sample["row"])
        super().on_test_epoch_end()

    # --- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self.model(**model_inputs(batch, targets=False)).logits.float().softmax(-1)
        confidence, prediction = probs.max(-1)
        return {"prediction": prediction, "confidence": confidence}

    def predictions_table(self, batches: list[dict[str, torch.Tensor]], order: list[int]) -> dict[str, list]:
        """``prediction`` (the index of the chosen ending) and ``confidence`` (its softmax probability) per row."""
        return {key: in_row_order(torch.cat([b[key] for b in batches]).tolist(), order)
                for key in ("prediction", "confidence")}
