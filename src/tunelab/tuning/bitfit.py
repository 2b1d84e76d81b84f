"""BitFit (Ben Zaken et al., 2022): only the bias terms and the task head train."""

from __future__ import annotations

from transformers import PreTrainedModel

from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.parts import head_parameter_names, train_only


class BitFit(TuningStrategy):
    name = "bitfit"

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        biases = {n for n, _ in model.named_parameters() if n.endswith("bias")}
        train_only(model, biases | head_parameter_names(model))
        return model
