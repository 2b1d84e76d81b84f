"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020), inserted into any block.

No maintained adapter library supports transformers 5 yet, so this is a small module of our own:
each adapter is ``x + up(act(down(x)))`` with ``up`` zero-initialised (the model starts out
unchanged), placed after the attention output projection and the feed-forward output projection
(``houlsby``) or after the feed-forward output only (``pfeiffer``), before the residual + LayerNorm.
The backbone is frozen; adapters, LayerNorms (optional) and the task head train.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.errors import ConfigError
from tunelab.models import load_model
from tunelab.tuning.base import TuningStrategy
from tunelab.tuning.parts import find_blocks, head_parameter_names, train_only

# Output projections, as names relative to a block (BERT/RoBERTa/DeBERTa, DistilBERT, GPT-2, T5, BART).
# Llama, Qwen2, Mistral and Gemma name them self_attn.o_proj and mlp.down_proj.
ATTENTION_OUTPUTS = ("attention.output.dense", "attention.out_lin", "attn.c_proj", "SelfAttention.o", "self_attn.out_proj",
                     "self_attn.o_proj")
FFN_OUTPUTS = ("output.dense", "ffn.lin2", "mlp.c_proj", "DenseReluDense.wo", "fc2", "mlp.down_proj")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "tunelab_adapters.json"


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, reduction_factor: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, max(1, hidden // reduction_factor))
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(self.down.out_features, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class WithAdapter(nn.Module):
    """A projection followed by an adapter; keeps the projection's parameter names under ``layer``."""

    def __init__(self, layer: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.layer, self.adapter = layer, adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.adapter(self.layer(*args, **kwargs))


def _out_features(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if hasattr(layer, "nf"):  # GPT-2's Conv1D
        return layer.nf
    raise ConfigError(f"cannot place an adapter after a {type(layer).__name__}: unknown output size")


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith(f".{s}") for s in suffixes)


class Adapter(TuningStrategy):
    """Bottleneck adapters.

    Args:
        placement: ``houlsby`` (after attention and FFN) or ``pfeiffer`` (after FFN only).
        reduction_factor: hidden size / bottleneck size.
        activation: relu, gelu, tanh or silu.
        train_layer_norms: also train the LayerNorms (as Houlsby et al. do).
        blocks: override block detection (see ``tunelab.tuning.parts``).
    """

    name = "adapter"

    def __init__(self, placement: str = "houlsby", reduction_factor: int = 16, activation: str = "relu",
                 train_layer_norms: bool = True, blocks: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if placement not in ("houlsby", "pfeiffer"):
            raise ConfigError(f"tuning.placement must be houlsby or pfeiffer, got {placement!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"tuning.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.placement, self.reduction_factor, self.activation = placement, reduction_factor, activation
        self.train_layer_norms, self.blocks = train_layer_norms, blocks

    def _targets(self, block: nn.Module) -> list[str]:
        names = [n for n, _ in block.named_modules() if n]
        attention = [n for n in names if _matches(n, ATTENTION_OUTPUTS)]
        ffn = [n for n in names if _matches(n, FFN_OUTPUTS) and n not in attention]
        return attention + ffn if self.placement == "houlsby" else ffn

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        for block_name, block in find_blocks(model, self.blocks):
            targets = self._targets(block)
            if not targets:
                raise ConfigError(f"no attention/FFN output projection found in {block_name} ({type(block).__name__})")
            for target in targets:
                parent_name, _, child = target.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                layer = getattr(parent, child)
                adapter = Bottleneck(_out_features(layer), self.reduction_factor, self.activation)
                setattr(parent, child, WithAdapter(layer, adapter))
        trainable = {n for n, _ in model.named_parameters() if ".adapter." in n} | head_parameter_names(model)
        if self.train_layer_norms:
            norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
            trainable |= {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
        train_only(model, trainable)
        return model

    def _config(self) -> dict[str, Any]:
        return {"placement": self.placement, "reduction_factor": self.reduction_factor, "activation": self.activation,
                "train_layer_norms": self.train_layer_norms, "blocks": self.blocks}

    def save(self, model: nn.Module, path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """The base model's config + the trained tensors (adapters, LayerNorms, head) + the tokenizer."""
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(self._config(), indent=2) + "\n")

    def load_pretrained(self, auto_class: type, model_cfg: Mapping[str, Any], path: Path, **config_kwargs: Any) -> nn.Module:
        model = self.apply(load_model(auto_class, model_cfg, **config_kwargs))
        missing = set(load_file(str(path / WEIGHTS_FILE))) - set(model.state_dict())
        if missing:
            raise ConfigError(f"{path / WEIGHTS_FILE} does not fit {type(model).__name__}: {sorted(missing)[:5]}")
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
        return model
