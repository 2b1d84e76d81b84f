"""Which parameters of a transformers model are its embeddings, its transformer blocks and its head.

Auto-detection covers BERT, RoBERTa, DeBERTa, DistilBERT, T5, BART, GPT-2 and most architectures
built the same way; ``blocks`` (attribute paths, comma-separated, e.g. ``bert.encoder.layer``)
overrides it for others.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from tunelab.errors import ConfigError

BLOCK_CLASS_HINTS = ("Layer", "Block")


def _get(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise ConfigError(f"tuning.blocks: '{path}' is not a submodule of {type(model).__name__} (no '{part}')")
        module = getattr(module, part)
    return module


def find_blocks(model: nn.Module, paths: str | None = None) -> list[tuple[str, nn.Module]]:
    """The transformer blocks, bottom to top (an encoder's before a decoder's), with their names."""
    if paths:
        blocks = []
        for path in (p.strip() for p in paths.split(",")):
            container = _get(model, path)
            if not isinstance(container, nn.ModuleList):
                raise ConfigError(f"tuning.blocks: '{path}' is a {type(container).__name__}, not a ModuleList of blocks")
            blocks += [(f"{path}.{i}", block) for i, block in enumerate(container)]
        return blocks
    lists = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1
        and any(h in type(m[0]).__name__ for h in BLOCK_CLASS_HINTS)
    ]
    outer = [(n, m) for n, m in lists if not any(n.startswith(f"{o}.") for o, _ in lists if o != n)]
    if not outer:
        raise ConfigError(
            f"could not find the transformer blocks of {type(model).__name__}; set tuning.blocks to their "
            "ModuleList path(s), e.g. tuning.blocks=model.encoder.layers"
        )
    return [(f"{name}.{i}", block) for name, container in outer for i, block in enumerate(container)]


def head_parameter_names(model: nn.Module) -> set[str]:
    """Parameters outside the pretrained backbone (e.g. ``classifier.*``): new, always trained.
    Empty for models whose output layer is pretrained: LM heads, tied (T5, GPT-2) or not (Llama 3, Qwen2.5-7B,
    Mistral), whose ``lm_head`` is a pretrained output embedding."""
    prefix = getattr(model, "base_model_prefix", "")
    if not (prefix and hasattr(model, prefix)):
        return set()
    output = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    pretrained = {id(p) for p in output.parameters()} if isinstance(output, nn.Module) else set()
    return {n for n, p in model.named_parameters() if not n.startswith(f"{prefix}.") and id(p) not in pretrained}


def embedding_parameter_names(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> set[str]:
    """Token/position embeddings: everything registered before the first block, plus any
    ``*embed*`` parameter and the input embeddings (which output embeddings may share)."""
    first = blocks[0][0] + "."
    names: set[str] = set()
    for name, _ in model.named_parameters():
        if name.startswith(first):
            break
        names.add(name)
    names |= {n for n, _ in model.named_parameters() if "embed" in n}
    if isinstance(model, PreTrainedModel) and model.get_input_embeddings() is not None:
        inputs = {id(p) for p in model.get_input_embeddings().parameters()}
        names |= {n for n, p in model.named_parameters() if id(p) in inputs}
    return names - head_parameter_names(model)


def train_only(model: nn.Module, trainable: set[str]) -> None:
    """Freeze every parameter whose name is not in ``trainable``."""
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable
