"""Augmented copies of the training rows (``task.data.augment``): EDA word operations and back-translation.

- ``copies``: EDA copies per training example (Wei & Zou, 2019). As in the paper's reference implementation,
  each copy applies one operation, the operations taking turns: per example the enabled ones are repeated
  ``copies // len(ops) + 1`` times, shuffled, and the first ``copies`` are used. Each operation changes
  ``n = max(1, ceil(alpha * words))`` words (nlpaug's count; the reference rounds down), ``alpha`` being its
  ``eda`` rate (0 leaves it out):

  - ``synonym``: at most n words, of those that have synonyms, replaced by one of them (``nlpaug``
    ``WordEmbsAug(action="substitute")`` reading the synonym table below as its model);
  - ``insert``: n times, a synonym of a random word of the text inserted at a random position (tunelab's own:
    nlpaug's insertions draw random vocabulary words, not synonyms);
  - ``swap``: n words swapped with a neighbour (``nlpaug`` ``RandomWordAug(action="swap")``; the reference swaps
    any two words);
  - ``delete``: n words deleted (``nlpaug`` ``RandomWordAug(action="delete")``, which keeps the second word when
    it deletes the first two; the reference deletes each word with probability alpha).

  Words are the text's whitespace-separated tokens, punctuation attached (a copy joins them with single spaces);
  the reference lower-cases the text and strips everything but letters, which this does not.
- ``synonyms``: where synonyms come from, offline: ``embedding``, the ``neighbours`` nearest whole words (cosine
  of at least ``min_similarity``) in the input-embedding matrix of ``model`` at ``revision`` (the run's backbone;
  that one tensor is read from its safetensors, not the whole model), computed once for the words of the training
  texts (and their lower-case forms); or a word-list file: one set of synonyms per line, comma-separated
  (``big, large, huge``; phrases allowed; ``#`` comments). Words are matched case-insensitively and take the
  case of the word they replace; ``stopwords`` are never replaced, inserted or used as neighbours.
- ``backtranslate: [<to>, <back>]``: one more copy per example, each text translated by ``<to>`` and back by
  ``<back>`` (encoder-decoders: a tunelab run folder, its ``model/`` export, or a local or Hub name that
  ``AutoModelForSeq2SeqLM`` loads), sentence by sentence, batched, with ``translation``'s generation settings.

The copies of a row depend on ``(seed, row, copy)`` only (``seed`` null: the run's ``seed``): not on the other rows,
the process or the machine (back-translation: given the same models, device and batches). Copies that change
nothing or leave a text blank are not added, and counted (``unchanged``, ``empty``). Applied to the training split
only, after ``few_shot`` / ``train_fraction`` and ``max_samples``; validation and test are never augmented.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerBase

from tunelab.data.checks import ROW, RowNumbering, refuse_unknown_keys
from tunelab.errors import ConfigError

log = logging.getLogger(__name__)

KEY = "task.data.augment"
EDA_OPS = ("synonym", "insert", "swap", "delete")
BACKTRANSLATE = "backtranslate"
EMBEDDING = "embedding"
_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

#: English function words (articles, pronouns, prepositions, conjunctions, auxiliaries): ``stopwords: english``.
ENGLISH_STOPWORDS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "i", "me", "my", "mine", "myself", "we", "us", "our",
    "ours", "ourselves", "you", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their", "theirs", "themselves",
    "what", "which", "who", "whom", "whose", "am", "is", "are", "was", "were", "be", "been", "being", "have",
    "has", "had", "having", "do", "does", "did", "doing", "will", "would", "shall", "should", "can", "could",
    "may", "might", "must", "and", "but", "or", "nor", "if", "then", "else", "because", "as", "so", "than",
    "too", "very", "just", "only", "not", "no", "yes", "of", "at", "by", "for", "with", "about", "against",
    "between", "into", "through", "during", "before", "after", "above", "below", "to", "from", "up", "down",
    "in", "out", "on", "off", "over", "under", "again", "further", "once", "here", "there", "when", "where",
    "why", "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "own", "same",
    "s", "t", "don", "now", "also", "while", "until", "upon", "via", "per"
})


# --- config -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Synonyms:
    """``task.data.augment.synonyms``: the source of the synonym and insert operations."""

    source: str = EMBEDDING
    model: str | None = None  #: whose input embeddings (None: the tokenizer's ``name_or_path``)
    revision: str | None = None  #: of ``model`` (the run's ``model.revision`` in the shipped yaml)
    neighbours: int = 10
    min_similarity: float = 0.4
    stopwords: str | tuple[str, ...] | None = "english"

    @property
    def stopword_set(self) -> frozenset[str]:
        if self.stopwords is None:
            return frozenset()
        if self.stopwords == "english":
            return ENGLISH_STOPWORDS
        return frozenset(w.lower() for w in self.stopwords)


@dataclass(frozen=True)
class Translation:
    """``task.data.augment.translation``: ``prefixes`` (text put before each source of the to / back model; null:
    a tunelab run folder's ``task.data.source_prefix``, else none), ``batch_size``, and ``generate()`` kwargs."""

    prefixes: tuple[str | None, str | None] = (None, None)
    batch_size: int = 16
    generate: Mapping[str, Any] = field(default_factory=lambda: {"num_beams": 4, "max_new_tokens": 256})


@dataclass(frozen=True)
class AugmentConfig:
    """``task.data.augment``; see the module docstring."""

    copies: int = 0
    seed: int | None = None
    eda: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(EDA_OPS, 0.1))
    synonyms: Synonyms = field(default_factory=Synonyms)
    backtranslate: tuple[str, str] | None = None
    translation: Translation = field(default_factory=Translation)
    sample: int = 20

    @classmethod
    def parse(cls, cfg: Mapping[str, Any] | None) -> AugmentConfig:
        """The settings, or a ConfigError naming the key."""
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        refuse_unknown_keys(cfg, [f.name for f in fields(cls)], KEY)
        copies = _whole(cfg.get("copies", 0), f"{KEY}.copies", 0)
        seed = cfg.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{KEY}.seed must be null (the run's seed) or a whole number, got {seed!r}")
        eda = dict.fromkeys(EDA_OPS, 0.1)
        given = dict(cfg.get("eda") or {})
        refuse_unknown_keys(given, EDA_OPS, f"{KEY}.eda")
        for op, rate in given.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ConfigError(f"{KEY}.eda.{op} must be a number in [0, 1] (0: not used), got {rate!r}")
            eda[op] = float(rate)
        out = cls(copies, seed, eda, _synonyms(cfg.get("synonyms")), _languages(cfg.get("backtranslate")),
                  _translation(cfg.get("translation")), _whole(cfg.get("sample", 20), f"{KEY}.sample", 0))
        if copies and not out.ops:
            raise ConfigError(f"{KEY}.copies={copies} makes EDA copies, but every {KEY}.eda rate is 0: set one above 0")
        return out  # a word list is looked for when it is read (Augmentation.synonyms): a run copied elsewhere parses

    @property
    def ops(self) -> list[str]:
        """The EDA operations in use (rate above 0)."""
        return [op for op in EDA_OPS if self.eda[op] > 0]

    @property
    def active(self) -> bool:
        return self.copies > 0 or self.backtranslate is not None

    @property
    def needs_synonyms(self) -> bool:
        return self.copies > 0 and bool({"synonym", "insert"} & set(self.ops))

    def describe(self) -> str:
        """The settings that turn augmentation on, as keys, for messages."""
        on = [f"{KEY}.copies={self.copies}"] if self.copies else []
        if self.backtranslate:
            on.append(f"{KEY}.backtranslate=[{', '.join(self.backtranslate)}]")
        return " and ".join(on)


def _whole(value: Any, at: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{at} must be a whole number of at least {minimum}, got {value!r}")
    return value


def _synonyms(cfg: Mapping[str, Any] | None) -> Synonyms:
    at = f"{KEY}.synonyms"
    cfg = dict(cfg or {})
    refuse_unknown_keys(cfg, [f.name for f in fields(Synonyms)], at)
    out = Synonyms(**cfg)
    if not isinstance(out.source, str) or not out.source:
        raise ConfigError(f"{at}.source must be '{EMBEDDING}' or the path of a word-list file, got {out.source!r}")
    if out.model is not None and not isinstance(out.model, str):
        raise ConfigError(f"{at}.model must be a model name or path, got {out.model!r}")
    if out.revision is not None and not isinstance(out.revision, str):
        raise ConfigError(f"{at}.revision must be null or a branch, tag or commit of synonyms.model, got {out.revision!r}")
    _whole(out.neighbours, f"{at}.neighbours", 1)
    if isinstance(out.min_similarity, bool) or not isinstance(out.min_similarity, int | float) \
            or not -1 <= out.min_similarity <= 1:
        raise ConfigError(f"{at}.min_similarity must be a cosine similarity in [-1, 1], got {out.min_similarity!r}")
    stop = out.stopwords
    if stop is not None and stop != "english":
        if isinstance(stop, str) or not isinstance(stop, Sequence) or not all(isinstance(w, str) for w in stop):
            raise ConfigError(f"{at}.stopwords must be english, null or a list of words, got {stop!r}")
        out = replace(out, stopwords=tuple(stop))
    return out


def _languages(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2 \
            or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{KEY}.backtranslate must be null or [<to>, <back>]: two translation models (a tunelab run "
                          f"folder or a model name or path), got {value!r}")
    return value[0], value[1]


def _translation(cfg: Mapping[str, Any] | None) -> Translation:
    at = f"{KEY}.translation"
    cfg = dict(cfg or {})
    default = Translation()
    prefixes = cfg.pop("prefixes", default.prefixes)
    if isinstance(prefixes, str) or not isinstance(prefixes, Sequence) or len(prefixes) != 2 \
            or not all(p is None or isinstance(p, str) for p in prefixes):
        raise ConfigError(f"{at}.prefixes must be [<to prefix>, <back prefix>], each text or null, got {prefixes!r}")
    batch_size = _whole(cfg.pop("batch_size", default.batch_size), f"{at}.batch_size", 1)
    return Translation((prefixes[0], prefixes[1]), batch_size, {**default.generate, **cfg})


# --- determinism --------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(*key: object) -> Iterator[None]:
    """Python's and numpy's global random states (which nlpaug draws from) seeded from ``key``, and restored after."""
    state, np_state = random.getstate(), np.random.get_state()
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


def plan(ops: Sequence[str], copies: int) -> list[str]:
    """The operation of each copy: EDA's turns (each op ``copies // len(ops) + 1`` times, shuffled, cut to ``copies``)."""
    pool = list(ops) * (copies // len(ops) + 1)
    random.shuffle(pool)
    return pool[:copies]


def count(rate: float, words: int) -> int:
    """Words an operation changes: ``max(1, ceil(rate * words))`` (nlpaug's ``aug_p`` with ``aug_min=1``)."""
    return max(1, math.ceil(rate * words))


# --- synonyms -----------------------------------------------------------------------------------
def affixes(token: str) -> tuple[str, str, str]:
    """``"(Hello,"`` -> ``("(", "Hello", ",")``: the punctuation around a token and its core."""
    match = _AFFIXES.match(token)
    assert match is not None  # the pattern matches any string
    return match.group(1), match.group(2), match.group(3)


def match_case(like: str, word: str) -> str:
    """``word`` in the case of ``like`` (upper, capitalised, or as it is)."""
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper() and word[:1].islower():
        return word[:1].upper() + word[1:]
    return word


class SynonymTable:
    """Synonyms by word (a word list's, or the embedding neighbours of the training words); stop words have none.

    Read by nlpaug's ``WordEmbsAug`` as its model (``get_vocab`` holds the tokens that have synonyms, ``predict``
    gives them) and by the insert operation (``of``).
    """

    def __init__(self, synonyms: Mapping[str, Sequence[str]], stopwords: frozenset[str] = frozenset()):
        self.synonyms = {w: list(s) for w, s in synonyms.items() if s}
        self.stopwords = stopwords

    def of(self, word: str, cased: bool = True) -> list[str]:
        """The synonyms of a bare word (those of the word as it is, else of its lower-case form), in its case
        (``cased``) or as the source writes them."""
        if not word or word.lower() in self.stopwords:
            return []
        found = self.synonyms.get(word) or self.synonyms.get(word.lower()) or []
        return [match_case(word, s) if cased else s for s in found if s.lower() not in self.stopwords]

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and bool(self.of(affixes(token)[1]))

    # nlpaug's word-embedding model interface
    def get_vocab(self) -> SynonymTable:
        return self

    def predict(self, token: str, n: int = 1) -> list[str]:
        """The synonyms of a token, its punctuation kept around them (``"cats,"`` -> ``["dogs,", ...]``)."""
        before, core, after = affixes(token)
        return [before + s + after for s in self.of(core)]


def read_word_list(path: str | os.PathLike) -> dict[str, list[str]]:
    """A word-list file: one set of synonyms per line, comma-separated; each is a synonym of the others."""
    synonyms: dict[str, list[str]] = {}
    for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        group = list(dict.fromkeys(w.strip() for w in line.split(",") if w.strip()))
        for word in group:
            found = synonyms.setdefault(word.lower(), [])
            found += [w for w in group if w.lower() != word.lower() and w not in found]
    return synonyms


def whole_words(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The vocabulary's whole words: entries (not special tokens) whose text is alphabetic, of 2 letters or more,
    and that the tokenizer encodes in running text (after another word and a space) as that one token. So
    WordPiece's words but not its ``##`` continuations, byte-level BPE's ``Ġ`` words and SentencePiece's ``▁``
    words but not the pieces inside words (nor those words' start-of-text forms). Word -> token id."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in sorted(tokenizer.get_vocab().values()) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    candidates = [(i, t.strip()) for i, t in zip(ids, texts, strict=True) if t.strip().isalpha() and len(t.strip()) >= 2]
    context = tokenizer("x", add_special_tokens=False)["input_ids"]
    encoded = tokenizer([f"x {w}" for _, w in candidates], add_special_tokens=False)["input_ids"] if candidates else []
    words: dict[str, int] = {}
    for (i, word), ids_ in zip(candidates, encoded, strict=True):
        if ids_ == [*context, i]:
            words.setdefault(word, i)
    return words


def input_embeddings(name: str, revision: str | None = None) -> torch.Tensor:
    """The input-embedding matrix of a model, in float32 on the CPU: that one tensor read from its safetensors
    file(s), the model built on the meta device (no weights) only to name it; the whole model loaded only when
    the checkpoint has no safetensors or no tensor of that name."""
    from transformers import AutoConfig, AutoModel

    from tunelab.hub import hub_errors
    from tunelab.models import model_path

    path = model_path(name)
    # fork_rng: the run's random state stays as it was (devices=[]: no GPU is touched)
    with hub_errors("model", path, f"point {KEY}.synonyms.model at a local copy"), torch.random.fork_rng(devices=[]):
        config = AutoConfig.from_pretrained(path, revision=revision)
        with torch.device("meta"):
            skeleton = AutoModel.from_config(config)
        weight = skeleton.get_input_embeddings().weight
        names = [n for n, p in skeleton.named_parameters(remove_duplicate=False) if p is weight]  # tied ones too
        prefix = skeleton.base_model_prefix  # a *For<Task> checkpoint stores the base model under it
        found = safetensors_tensor(path, [*names, *(f"{prefix}.{n}" for n in names if prefix)], revision)
        if found is None:
            log.info("%s: %s has no safetensors holding %s: loading the whole model for its input embeddings",
                     KEY, name, names[0])
            found = AutoModel.from_pretrained(path, revision=revision).get_input_embeddings().weight
    return found.detach().float()


def safetensors_tensor(path: str, keys: Sequence[str], revision: str | None = None) -> torch.Tensor | None:
    """The first of ``keys`` stored in the model's ``model.safetensors`` or, sharded, the file that
    ``model.safetensors.index.json`` maps it to (local folders and Hub names alike); None when there is none."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    single = cached_file(path, SAFE_WEIGHTS_NAME, revision=revision, _raise_exceptions_for_missing_entries=False)
    if single is not None:
        with safe_open(single, framework="pt") as weights:
            stored = set(weights.keys())
            key = next((k for k in keys if k in stored), None)
            return weights.get_tensor(key) if key is not None else None
    index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, revision=revision, _raise_exceptions_for_missing_entries=False)
    if index is None:
        return None
    weight_map = json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"]
    key = next((k for k in keys if k in weight_map), None)
    if key is None:
        return None
    with safe_open(cached_file(path, weight_map[key], revision=revision), framework="pt") as weights:
        return weights.get_tensor(key)


def embedding_neighbours(words: Iterable[str], tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor,
                         neighbours: int, min_similarity: float, stopwords: frozenset[str] = frozenset(),
                         chunk: int = 1024) -> dict[str, list[str]]:
    """Per word of ``words``, and per lower-cased word, that is a whole word of the vocabulary: its ``neighbours``
    nearest whole words by the cosine of their input embeddings, those of at least ``min_similarity`` and other than
    the word in another case, nearest first. Stop words are neither looked up nor neighbours. A word's entry
    depends on the word and the embeddings only (not on the other words), so ``SynonymTable.of`` gives a word the
    same synonyms whatever else the texts hold."""
    vocab = {w: i for w, i in whole_words(tokenizer).items() if i < embeddings.shape[0] and w.lower() not in stopwords}
    names = list(vocab)
    queries = sorted({form for w in words for form in (w, w.lower()) if form in vocab})
    if not queries:
        return {}
    table = torch.nn.functional.normalize(embeddings[[vocab[w] for w in names]].float(), dim=1)
    position = {w: k for k, w in enumerate(names)}
    k = min(2 * neighbours + 1, len(names))  # room for the word itself and its other cases
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        batch = queries[start:start + chunk]
        top = (table[[position[w] for w in batch]] @ table.T).topk(k)
        for word, values, indices in zip(batch, top.values.tolist(), top.indices.tolist(), strict=True):
            found = [names[j] for v, j in zip(values, indices, strict=True)
                     if v >= min_similarity and names[j].lower() != word.lower()][:neighbours]
            if found:
                out[word] = found
    return out


# --- operations ---------------------------------------------------------------------------------
def insert(text: str, rate: float, table: SynonymTable) -> str:
    """EDA's random insertion: n times, a random synonym of a random word (one that has synonyms) inserted at a
    random position."""
    words = text.split()
    sources = [core for core in (affixes(w)[1] for w in words) if table.of(core)]
    if not sources:
        return text
    for _ in range(count(rate, len(words))):
        synonym = random.choice(table.of(random.choice(sources), cased=False))
        words.insert(random.randint(0, len(words)), synonym)
    return " ".join(words)


def eda_operations(rates: Mapping[str, float], table: SynonymTable | None) -> dict[str, Callable[[str], str]]:
    """text -> augmented text, per EDA operation in use; nlpaug's over whitespace tokens."""
    import nlpaug.augmenter.word as naw  # slow to import (it loads transformers' pipelines): only when augmenting

    words = {"tokenizer": str.split, "reverse_tokenizer": " ".join, "aug_min": 1, "aug_max": None}
    out: dict[str, Callable[[str], str]] = {}
    for op in ("swap", "delete"):
        if rates[op]:
            out[op] = _first(naw.RandomWordAug(action=op, aug_p=rates[op], **words))
    if rates["synonym"]:
        assert table is not None
        out["synonym"] = _first(naw.WordEmbsAug(model_type="word2vec", model=table, action="substitute",
                                                aug_p=rates["synonym"], top_k=None, **words))
    if rates["insert"]:
        assert table is not None
        out["insert"] = lambda text: insert(text, rates["insert"], table)
    return out


def _first(augmenter: Any) -> Callable[[str], str]:
    def run(text: str) -> str:
        found = augmenter.augment(text)
        return found[0] if found else text

    return run


# --- back-translation ---------------------------------------------------------------------------
def translation_model(name: str) -> tuple[str, str | None]:
    """The model folder of a tunelab run folder (its ``model/`` export) or a model name, and the run's
    ``task.data.source_prefix`` (read from its ``config.yaml`` as data) when it is a run."""
    from tunelab.models import model_path

    folder = Path(name).expanduser()
    if (folder / "model" / "config.json").is_file() or (folder / "model" / "adapter_config.json").is_file():
        folder = folder / "model"
    prefix = None
    run_config = folder.parent / "config.yaml"
    if folder.name == "model" and run_config.is_file():
        task = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("task") or {}
        prefix = (task.get("data") or {}).get("source_prefix")
    return model_path(str(folder) if folder.exists() else name), prefix


def sentences(text: str) -> list[str]:
    """A text cut after ``.``, ``!`` or ``?`` followed by whitespace (translation models translate sentences)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return torch.device("cuda", local % torch.cuda.device_count())


class BackTranslator:
    """Texts translated by ``to`` and back by ``back`` (``AutoModelForSeq2SeqLM``), sentence by sentence."""

    def __init__(self, models: tuple[str, str], settings: Translation, seed: int):
        self.settings, self.seed, self.device = settings, seed, device()
        self.steps = []
        # loading draws no random numbers from the run's state; only this process's GPU, if any, is touched
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for k, name in enumerate(models):
                self.steps.append(self._load(k, name))

    def _load(self, k: int, name: str) -> tuple[PreTrainedTokenizerBase, Any, str]:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        from tunelab.hub import hub_errors

        at = f"{KEY}.backtranslate[{k}]"
        path, run_prefix = translation_model(name)
        with hub_errors("translation model", path, f"point {at} at a local copy or a tunelab run folder"):
            config = AutoConfig.from_pretrained(path)
            if not getattr(config, "is_encoder_decoder", False):
                raise ConfigError(f"{at}={name} is a {config.model_type} model, not an encoder-decoder "
                                  f"(AutoModelForSeq2SeqLM): back-translation needs translation models such as "
                                  f"Marian (opus-mt) or T5, or a tunelab translation run")
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()
        prefix = self.settings.prefixes[k]
        return tokenizer, model, prefix if prefix is not None else run_prefix or ""

    def close(self) -> None:
        """Let go of the models (and, on a GPU, of the memory they held): training needs it."""
        self.steps.clear()
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def __call__(self, texts: Sequence[str]) -> list[str]:
        cut = [sentences(t) for t in texts]
        flat = [s for parts in cut for s in parts]
        for tokenizer, model, prefix in self.steps:
            flat = self._generate(tokenizer, model, prefix, flat)
        out, start = [], 0
        for parts in cut:
            out.append(" ".join(s.strip() for s in flat[start:start + len(parts)] if s.strip()))
            start += len(parts)
        return out

    @torch.inference_mode()
    def _generate(self, tokenizer: PreTrainedTokenizerBase, model: Any, prefix: str, texts: list[str]) -> list[str]:
        """Batches of similar length (longest first); sampling, if asked for, seeded per batch."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = [""] * len(texts)
        size = self.settings.batch_size
        for number, start in enumerate(range(0, len(order), size)):
            rows = order[start:start + size]
            batch = tokenizer([prefix + texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(self.seed + number)
                generated = model.generate(**batch.to(self.device), **self.settings.generate)
            for i, text in zip(rows, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
                out[i] = text
        return out


# --- the training split -------------------------------------------------------------------------
def _words(value: Any) -> Any:
    """A text as its words (a copy joins them with single spaces); other values as they are."""
    return value.split() if isinstance(value, str) else value


class Augmentation:
    """One ``AugmentConfig`` applied to a training split; keeps the counts (``data/train/...`` in ``metrics.json``)
    and a sample of the copies (the run folder's ``augment_sample.jsonl``)."""

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self.seed = config.seed if config.seed is not None else seed
        self.counts: dict[str, int] = {}
        self.sample: list[dict[str, Any]] = []

    def synonyms(self, texts: Iterable[str], tokenizer: PreTrainedTokenizerBase) -> SynonymTable:
        source = self.config.synonyms
        stop = source.stopword_set
        if source.source != EMBEDDING:
            if not Path(source.source).expanduser().is_file():
                raise ConfigError(f"{KEY}.synonyms.source={source.source}: no such file (a word list, or "
                                  f"'{EMBEDDING}' for neighbours in the model's input embeddings)")
            table = SynonymTable(read_word_list(source.source), stop)
            log.info("%s: %d words with synonyms in %s", KEY, len(table.synonyms), source.source)
            return table
        name = source.model or tokenizer.name_or_path
        embeddings = input_embeddings(name, source.revision)
        if embeddings.shape[0] < len(tokenizer):
            raise ConfigError(f"{KEY}.synonyms.model={name} has {embeddings.shape[0]} input embeddings, fewer than the "
                              f"{len(tokenizer)} tokens of the run's tokenizer: it must be the run's backbone")
        words = {affixes(w)[1] for text in texts for w in text.split()} - {""}
        table = SynonymTable(embedding_neighbours(words, tokenizer, embeddings, source.neighbours,
                                                  source.min_similarity, stop), stop)
        log.info("%s: embedding neighbours of %s for %d forms (as written, lower-cased) of %d distinct training words",
                 KEY, name, len(table.synonyms), len(words))
        return table

    def apply(self, ds: datasets.Dataset, columns: Sequence[str], tokenizer: PreTrainedTokenizerBase,
              numbering: RowNumbering) -> datasets.Dataset:
        """``ds`` (train, with the hidden ``ROW`` column) followed by its copies: the same rows with ``columns``
        (text) augmented."""
        texts = {c: ds.select_columns([c]).to_dict()[c] for c in columns}
        rows = ds[ROW]
        made: list[tuple[int, int, str, dict[str, Any]]] = []  # (position, copy, op, texts)
        if self.config.copies:
            strings = (t for values in texts.values() for t in values if isinstance(t, str))
            table = self.synonyms(strings, tokenizer) if self.config.needs_synonyms else None
            ops = eda_operations(self.config.eda, table)
            for i, row in enumerate(rows):
                with seeded(self.seed, row):
                    chosen = plan(self.config.ops, self.config.copies)
                for copy, op in enumerate(chosen):
                    new = {}
                    for k, column in enumerate(columns):
                        value = texts[column][i]
                        with seeded(self.seed, row, copy, k):
                            new[column] = ops[op](value) if isinstance(value, str) and value.strip() else value
                    made.append((i, copy, op, new))
        if self.config.backtranslate:
            translate = BackTranslator(self.config.backtranslate, self.config.translation, self.seed)
            try:
                done = {c: translate([v if isinstance(v, str) else "" for v in texts[c]]) for c in columns}
            finally:
                translate.close()
            made += [(i, self.config.copies, BACKTRANSLATE,
                      {c: done[c][i] if isinstance(texts[c][i], str) else texts[c][i] for c in columns})
                     for i in range(len(ds))]
        return self._add(ds, columns, texts, made, numbering)

    def _add(self, ds: datasets.Dataset, columns: Sequence[str], texts: Mapping[str, list], made: list,
             numbering: RowNumbering) -> datasets.Dataset:
        kept = []
        counts: Counter[str] = Counter({op: 0 for op in (*(self.config.ops if self.config.copies else ()),
                                                       *([BACKTRANSLATE] if self.config.backtranslate else ()))})
        for i, copy, op, new in made:
            if any(isinstance(new[c], str) and isinstance(texts[c][i], str) and not new[c].strip() and texts[c][i].strip()
                   for c in columns):
                counts["empty"] += 1
            elif all(_words(new[c]) == _words(texts[c][i]) for c in columns):
                counts["unchanged"] += 1
            else:
                kept.append((i, copy, op, new))
                counts[op] += 1
        self.counts = {"originals": len(ds), "augmented": len(kept),
                       **{f"augmented/{name}": n for name, n in counts.items()}}
        for name in ("unchanged", "empty"):
            self.counts.setdefault(f"augmented/{name}", 0)
        log.info("%s: %d copies of %d training rows (%s)", KEY, len(kept), len(ds),
                 ", ".join(f"{name} {n}" for name, n in counts.items()))
        with seeded(self.seed, "sample"):
            shown = sorted(random.sample(range(len(kept)), min(self.config.sample, len(kept))))
        rows = ds[ROW]
        self.sample = [{"row": numbering.describe([rows[kept[j][0]]]), "copy": kept[j][1], "op": kept[j][2],
                        "original": {c: texts[c][kept[j][0]] for c in columns}, "augmented": kept[j][3]}
                       for j in shown]
        if not kept:
            return ds
        copies = ds.select([i for i, *_ in kept])
        order = copies.column_names
        for column in columns:
            feature = ds.features[column]
            copies = copies.remove_columns(column).add_column(column, [new[column] for *_, new in kept], feature=feature)
        return datasets.concatenate_datasets([ds, copies.select_columns(order)])
