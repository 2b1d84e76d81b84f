"""QLoRA (Dettmers et al., 2023): LoRA adapters trained over a frozen base quantised to 4 bits.

The backbone is loaded through bitsandbytes with the ``tuning.quantization`` settings (4-bit NormalFloat,
double quantisation of the scales, bf16 compute): its linear layers become ``bitsandbytes.nn.Linear4bit``.
``peft.prepare_model_for_kbit_training`` freezes it and keeps the other weights (norms, embeddings, head) in
fp32, then LoRA wraps the linear layers as ``tuning=lora`` does. The export is the LoRA adapter; a merged
export is refused, since merging into 4-bit weights would round the merged weights back to 4 bits.
Gradient checkpointing is ``model.gradient_checkpointing``, as for every method.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftConfig, prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig, PreTrainedModel

from tunelab.config_checks import suggest
from tunelab.errors import ConfigError
from tunelab.tuning.peft import Peft


def check_quantisation_support() -> None:
    """A ConfigError where tuning=qlora cannot run: no CUDA GPU, or bitsandbytes missing."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("torch sees no CUDA GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (pip install -e '.[qlora]')")
    if missing:
        raise ConfigError(f"tuning=qlora needs a CUDA GPU and bitsandbytes, and here {' and '.join(missing)}; "
                          "use tuning=lora (the same LoRA adapters over full-precision weights) on this machine")


class QLoRA(Peft):
    """LoRA over a 4-bit base.

    Args:
        peft: a ``peft.LoraConfig``.
        quantization: arguments of ``transformers.BitsAndBytesConfig`` (``load_in_4bit``,
            ``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``, ``bnb_4bit_compute_dtype``, ...).
        merge_on_export: refused (true): the adapter is the export.
    """

    def __init__(self, peft: PeftConfig, quantization: Mapping[str, Any], merge_on_export: bool = False,
                 name: str | None = None, **kwargs: Any):
        check_quantisation_support()  # before any model is loaded
        if merge_on_export:
            raise ConfigError("tuning.merge_on_export=true is not possible with tuning=qlora: merging the adapter "
                              "into 4-bit weights rounds the result back to 4 bits. The export is the LoRA adapter; "
                              "merge it into the full-precision base with peft (merge_and_unload) where you need one")
        accepted = set(inspect.signature(BitsAndBytesConfig).parameters) - {"kwargs"}
        for key in quantization:
            if key not in accepted:
                match = suggest(str(key), accepted)
                hint = f"did you mean tuning.quantization.{match}?" if match else f"it takes {', '.join(sorted(accepted))}"
                raise ConfigError(f"tuning.quantization.{key} is not an argument of transformers.BitsAndBytesConfig; {hint}")
        super().__init__(peft, merge_on_export=False, name=name or "qlora", **kwargs)
        self.quantization = dict(quantization)

    def load_kwargs(self) -> dict[str, Any]:
        return {"quantization_config": BitsAndBytesConfig(**self.quantization)}

    def apply(self, model: PreTrainedModel) -> nn.Module:
        from bitsandbytes.nn import Linear4bit

        quantised = [m for m in model.modules() if isinstance(m, Linear4bit)]
        if not quantised:  # e.g. a strategy wrapping this one that does not pass on load_kwargs()
            raise ConfigError(f"tuning=qlora got {type(model).__name__} with no 4-bit layer: it was loaded without "
                              "tuning.quantization")
        for module in quantised:
            module.register_load_state_dict_pre_hook(keep_quantised_weight)
        # model.gradient_checkpointing has already decided about checkpointing (tunelab.models.load_model)
        return super().apply(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False))


def keep_quantised_weight(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Loading a checkpoint (the best one for testing, or a resume) leaves a frozen 4-bit weight as it is: it is
    ``model.name_or_path`` quantised the same way in every run, and bitsandbytes saves its quantisation state
    beside it (``weight.absmax``, ...) in a form that ``Linear4bit`` does not load back."""
    for key in [k for k in state_dict if k.startswith(f"{prefix}weight.")]:
        del state_dict[key]
    state_dict[f"{prefix}weight"] = module.weight
