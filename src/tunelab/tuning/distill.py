"""Knowledge distillation (Hinton et al., 2015) from a frozen teacher into any student strategy.

    loss = alpha * task_loss + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)

where ``p^T = softmax(logits / T)``. The teacher is a finished tunelab run folder (loaded the way
that run's tuning strategy saved it, so a LoRA teacher works; checked like any run folder, see
``tunelab.trusted``) or any Hugging Face model name/path with the same labels (never running its
repository's code). It stays frozen and in eval mode; the student is tuned by ``student``
(full, lora, ...), which also decides how the student is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.errors import ConfigError
from tunelab.tuning.base import TuningStrategy


class FrozenTeacher(nn.Module):
    """Holds the teacher: no gradients, always in eval mode (``train()`` cannot switch it back)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean") * t * t


def auto_class_of(model: nn.Module) -> type:
    """``BertForSequenceClassification`` -> ``AutoModelForSequenceClassification``."""
    name = type(model).__name__
    if "For" in name and hasattr(transformers, f"AutoModel{name[name.index('For'):]}"):
        return getattr(transformers, f"AutoModel{name[name.index('For'):]}")
    raise ConfigError(f"cannot tell which Auto class loads a teacher for a {name} student")


class Distill(TuningStrategy):
    """Args: student (a strategy), teacher (run folder, model path or Hub name), alpha, temperature."""

    name = "distill"

    def __init__(self, student: TuningStrategy, teacher: str, alpha: float = 0.5, temperature: float = 2.0,
                 name: str | None = None, **kwargs: Any):
        super().__init__(name=name or f"distill-{student.name}", **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"tuning.alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ConfigError(f"tuning.temperature must be > 0, got {temperature}")
        self.student, self.teacher_name, self.alpha, self.temperature = student, str(teacher), alpha, temperature
        self.teacher: FrozenTeacher | None = None

    def _load_teacher(self, student: PreTrainedModel) -> nn.Module:
        from tunelab.exported import is_run_folder, load_run_model
        from tunelab.hub import hub_errors

        if is_run_folder(self.teacher_name):
            return load_run_model(self.teacher_name)
        with hub_errors("teacher model", self.teacher_name, "Set tuning.teacher to a run folder or a local model path."):
            return auto_class_of(student).from_pretrained(self.teacher_name, trust_remote_code=False)

    def apply(self, model: PreTrainedModel) -> nn.Module:
        teacher = self._load_teacher(model)
        student_labels = getattr(model.config, "id2label", None)
        teacher_labels = getattr(getattr(teacher, "config", None), "id2label", None)
        if student_labels and teacher_labels and dict(student_labels) != dict(teacher_labels):
            raise ConfigError(
                f"teacher {self.teacher_name} predicts {list(teacher_labels.values())}, the student "
                f"{list(student_labels.values())}: distillation needs the same labels in the same order"
            )
        self.teacher = FrozenTeacher(teacher)
        return self.student.apply(model)

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher} if self.teacher is not None else {}

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor], task_loss: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None, "apply() loads the teacher"
        task_loss = self.student.loss(outputs, batch, task_loss)  # e.g. AdaLoRA's regulariser
        kd = distillation_loss(outputs.logits, self.teacher(batch), self.temperature)
        return self.alpha * task_loss + (1 - self.alpha) * kd

    def optimizer(self, cfg: Mapping[str, Any], model: nn.Module,
                  clipping_under_mixed_precision: bool = False) -> torch.optim.Optimizer:
        return self.student.optimizer(cfg, model, clipping_under_mixed_precision)

    def on_optimizer_step(self, model: nn.Module, trainer: Any) -> None:
        self.student.on_optimizer_step(model, trainer)

    def load_kwargs(self) -> dict[str, Any]:
        return self.student.load_kwargs()  # e.g. a qlora student's 4-bit base

    def save(self, model: nn.Module, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        self.student.save(model, path, tokenizer)

    def load_pretrained(self, auto_class: type, model_cfg: Mapping[str, Any], path: Path, **config_kwargs: Any) -> nn.Module:
        return self.student.load_pretrained(auto_class, model_cfg, path, **config_kwargs)
