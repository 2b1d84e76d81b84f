"""BitFit (Ben Zaken et al., 2022): only the bias terms and the task head train."""

from __future__ import annotations

from transformers import PreTrainedModel

from tunelab.errors import ConfigError
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.parts import head_parameter_names, train_only


class BitFit(TuningStrategy):
    name = "bitfit"

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        biases = {n for n, _ in model.named_parameters() if n.endswith("bias")}
        if not biases:
            raise ConfigError(
                f"tuning=bitfit trains the bias terms, and {type(model).__name__} ({model.config.model_type}) has none "
                "(Llama, Mistral and Gemma layers are bias-free): use tuning=lora or tuning=ia3"
            )
        train_only(model, biases | head_parameter_names(model))
        return model
