"""Sequence-to-sequence data (summarization, translation): a source text and a target text per row.

On a decoder (``architecture: decoder``, from ``model.architecture``) a row becomes a prompt (the
template or chat template of ``tunelab.data.prompts``) followed by its completion: ``labels`` are
``IGNORE_INDEX`` on the prompt, so the loss covers the completion only, and the batch's ``meta`` holds the
prompts left-padded for batched generation. ``max_length`` is then the whole sequence (prompt +
completion) and ``max_target_length`` the completion.

Sources come from two columns (``source_column``/``target_column``) or, for Hub translation pairs
such as WMT16, from one column of ``{language: text}`` dicts (``translation_column`` with
``source_lang``/``target_lang``). Targets are tokenized with ``text_target`` (the target-side
tokenizer for Marian, mBART and NLLB), and padded with ``IGNORE_INDEX`` by ``DataCollatorForSeq2Seq``; the
source and reference texts travel in the batch's ``meta`` for metrics and samples.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import torch
from transformers import DataCollatorForSeq2Seq

from tunelab.batch import IGNORE_INDEX, with_meta
from tunelab.data import token_budget
from tunelab.data.base import Column, TaskDataModule
from tunelab.data.checks import ROW, blank, drop_empty, require_columns, visible_columns
from tunelab.data.packing import KEY as PACKING
from tunelab.data.packing import pack
from tunelab.data.prompts import COMPLETION_FIELD, SOURCE_FIELD, Encoded, Prompt
from tunelab.data.prompts import KEY as PROMPT
from tunelab.errors import ConfigError, DataError
from tunelab.models import ensure_pad_token

log = logging.getLogger(__name__)

SOURCE, REFERENCE = "source_text", "reference_text"  # text columns kept next to the features
ALL_REFERENCES = "all_references"  # in meta, when a row has several references (QA's gold answers)
PROMPT_EXAMPLES = "prompt_examples"  # in an export's tunelab.json: the few-shot examples its prompts showed
PROMPT_IDS, PROMPT_MASK = "prompt_input_ids", "prompt_attention_mask"  # decoders: the prompts, left-padded, in meta
_PROMPT_LENGTH, _PROMPT_CUT, _TARGET_CUT = "prompt_length", "prompt_tokens_cut", "target_tokens_cut"
CUT_FROM = {"source": "from the source's end", "start": "from the prompt's start"}


class Seq2SeqDataModule(TaskDataModule):
    """Source -> target pairs for encoder-decoder models.

    Args:
        source_column, target_column: text columns; ``target_column=None`` for unlabelled data
            (prediction only).
        translation_column: a column of ``{language: text}`` dicts (Hub translation datasets); the
            source and target are its ``source_lang`` and ``target_lang`` entries.
        source_lang, target_lang: language codes, also given to tokenizers that take them
            (``tokenizer.src_lang``/``tgt_lang`` of mBART, NLLB, M2M100: use their codes, e.g. ``en_XX``).
        source_prefix: text put before every source, e.g. T5's ``"summarize: "`` (encoder-decoders).
        architecture: ``encoder-decoder`` (source -> target) or ``decoder`` (prompt -> completion).
        prompt: decoders: the ``tunelab.data.prompts.Prompt`` settings (template, chat, ...).
        packing: decoders: lay each training batch's examples end to end in one row, without padding and
            without attention across examples (``tunelab.data.packing``).
        max_length: source truncation length in tokens (decoders: prompt + completion); ``max_target_length``
            for targets.
        **kwargs: see ``TaskDataModule``.
    """

    augment_unsupported = "an edited source would no longer be what its reference target translates or summarises"
    columns = (
        Column("source_column", "the source text"),
        Column("target_column", "the reference text (metrics are computed when present)", target=True),
        Column("translation_column", "{language: text} pairs (Hub translation datasets)"),
    )

    def __init__(
        self,
        *args: Any,
        source_column: str = "source",
        target_column: str | None = "target",
        translation_column: str | None = None,
        source_lang: str | None = None,
        target_lang: str | None = None,
        source_prefix: str | None = None,
        max_target_length: int = 64,
        architecture: str = "encoder-decoder",
        prompt: Mapping[str, Any] | None = None,
        packing: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.decoder = architecture == "decoder"
        if packing and not self.decoder:
            raise ConfigError(f"{PACKING}=true needs a decoder (model.architecture=decoder); "
                              f"model.architecture is {architecture}")
        self.packing = packing
        self.prompt = Prompt(**(prompt or {}))
        if self.decoder:
            ensure_pad_token(self.tokenizer)
            self.prompt.check_tokenizer(self.tokenizer)
        elif self.prompt.shots or self.prompt.examples:
            raise ConfigError(f"{PROMPT}.shots and {PROMPT}.examples (few-shot prompts) need a decoder "
                              f"(model.architecture=decoder); model.architecture is {architecture}")
        if self.prompt.examples is not None and self.prompt.shots not in (0, len(self.prompt.examples)):
            raise ConfigError(f"{PROMPT}.shots={self.prompt.shots} but {PROMPT}.examples holds {len(self.prompt.examples)}: "
                              f"set one of them")
        if translation_column and not (source_lang and target_lang):
            raise ConfigError(
                f"task.data.translation_column={translation_column} needs task.data.source_lang and task.data.target_lang "
                "(the keys of its {language: text} dicts)"
            )
        self.source_column = source_column
        self.target_column = target_column
        self.translation_column = translation_column
        self.source_lang, self.target_lang = source_lang, target_lang
        self.source_prefix = source_prefix or ""
        self.max_target_length = max_target_length
        self._set_tokenizer_languages()

    def _set_tokenizer_languages(self) -> None:
        """Multilingual tokenizers (mBART, NLLB, M2M100) mark the language with special tokens."""
        for attr, lang in (("src_lang", self.source_lang), ("tgt_lang", self.target_lang)):
            if lang and hasattr(self.tokenizer, attr):
                setattr(self.tokenizer, attr, lang)

    def module_kwargs(self) -> dict[str, Any]:
        generation: dict[str, Any] = {}
        if self.target_lang and hasattr(self.tokenizer, "tgt_lang"):
            token_id = self.tokenizer.convert_tokens_to_ids(self.target_lang)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                raise ConfigError(
                    f"task.data.target_lang={self.target_lang} is not a language code of this tokenizer "
                    f"({type(self.tokenizer).__name__}); use one of its codes, e.g. ro_RO or ron_Latn"
                )
            generation["forced_bos_token_id"] = token_id  # the decoder starts with the target language
        if self.decoder:  # stop at eos or the chat template's end of turn; pad (left) with the tokenizer's pad
            generation["eos_token_id"] = self.prompt.stop_token_ids(self.tokenizer)
            generation["pad_token_id"] = self.tokenizer.pad_token_id
        return {"tokenizer": self.tokenizer, "data_generation": generation, "packing": self.packing,
                PROMPT_EXAMPLES: list(self.prompt.examples) if self.prompt.examples else None}

    def batch_cost(self) -> token_budget.Cost:
        """A packed training batch is one row of real tokens; otherwise the padded inputs."""
        return token_budget.packed_cost if self.packing else super().batch_cost()

    @property
    def has_targets(self) -> bool:
        return bool(self.target_column or self.translation_column)

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = {}
        if export.get(PROMPT_EXAMPLES):  # the few-shot examples the run drew from its train split
            kwargs["prompt"] = {**(data_cfg.get("prompt") or {}), "examples": export[PROMPT_EXAMPLES]}
        if data_cfg.get("translation_column") and data_cfg["translation_column"] in columns:
            return kwargs
        return {**kwargs, "translation_column": None, **super().prediction_kwargs(data_cfg, columns, export)}

    # --- validation -----------------------------------------------------------------------------
    def _columns(self) -> dict[str, str]:
        if self.translation_column:
            return {"translation_column": self.translation_column}
        keys = {"source_column": self.source_column}
        if self.target_column:
            keys["target_column"] = self.target_column
        return keys

    def _pairs(self, columns: Mapping[str, list]) -> tuple[list[Any], list[Any] | None]:
        """Source texts and target texts (``None`` when unlabelled) of a batch of rows."""
        if self.translation_column:
            pairs = columns[self.translation_column]
            return [p.get(self.source_lang) for p in pairs], [p.get(self.target_lang) for p in pairs]
        return columns[self.source_column], columns[self.target_column] if self.target_column else None

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        require_columns(ds, self._columns(), split, where)
        if self.decoder:
            self.prompt.check_columns(visible_columns(ds), split, where)
        if self.translation_column:
            first = ds[0][self.translation_column]
            for key, lang in (("source_lang", self.source_lang), ("target_lang", self.target_lang)):
                if not isinstance(first, Mapping) or lang not in first:
                    found = sorted(first) if isinstance(first, Mapping) else type(first).__name__
                    raise DataError(
                        f"language '{lang}' (task.data.{key}) not in column '{self.translation_column}' of split "
                        f"'{split}' of {where}; it holds {found}"
                    )
        sources, targets = self._pairs({c: ds[c] for c in self._columns().values()})
        rows = zip(sources, targets, strict=True) if targets is not None else ((s,) for s in sources)
        empty = [i for i, row in enumerate(rows) if any(blank(t) for t in row)]
        return drop_empty(ds, empty, self.empty_text, "an empty source or target", split, where, self.numbering[split])

    # --- features -------------------------------------------------------------------------------
    def _draw_shots(self, train: datasets.Dataset, shots: int) -> list[int]:
        """``shots`` row positions of ``train`` (seed ``data_seed``); with a class column (``stratify_column``),
        the classes take turns, so that no label outnumbers another among the shots by more than one."""
        rng = random.Random(self.data_seed)
        if not (self.stratify_column and self.stratify_column in train.column_names):
            return rng.sample(range(len(train)), shots)
        by_class: dict[Any, list[int]] = {}
        for i, label in enumerate(train[self.stratify_column]):
            by_class.setdefault(label, []).append(i)
        queues = [rng.sample(rows, len(rows)) for _, rows in sorted(by_class.items())]
        rng.shuffle(queues)
        picked: list[int] = []
        while len(picked) < shots:
            picked += [queue.pop() for queue in queues if queue][:shots - len(picked)]
        return picked

    def before_featurize(self, splits: Mapping[str, datasets.Dataset]) -> None:
        """Few-shot prompts: ``prompt.shots`` solved rows drawn from the train split (seed ``data_seed``; classes
        in turn where the rows have one)."""
        shots = self.prompt.shots
        if not shots or self.prompt.examples is not None:
            return
        if "train" not in splits:
            raise ConfigError(f"{PROMPT}.shots={shots} draws its examples from the train split, which this run has "
                              f"not loaded; give them in {PROMPT}.examples")
        train = splits["train"]
        if len(train) < shots:
            raise DataError(f"{PROMPT}.shots={shots}, but split 'train' has {len(train)} rows ({self.origin['train']})")
        picked = sorted(self._draw_shots(train, shots))
        rows = train.select(picked)[:]
        sources, targets = self._pairs(rows)
        if targets is None:
            raise ConfigError(f"{PROMPT}.shots={shots} needs targets in the train split to show as answers")
        columns = [c for c in rows if c != ROW]
        limit, cut = self.prompt.shot_max_tokens, 0
        examples = []
        for i in range(shots):
            source = str(sources[i])
            if limit and len(ids := self.tokenizer(source, add_special_tokens=False)["input_ids"]) > limit:
                source, cut = self.tokenizer.decode(ids[:limit]), cut + 1
            examples.append({**{c: rows[c][i] for c in columns}, SOURCE_FIELD: source, COMPLETION_FIELD: str(targets[i])})
        self.prompt = self.prompt.with_examples(examples)
        log.info("few-shot prompts: %d examples from split 'train'%s: %s", shots,
                 f" ({cut} cut to {PROMPT}.shot_max_tokens={limit})" if cut else "", self.rows(train, "train", picked))

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        if self.decoder:
            return self._tokenize_prompts(batch)
        sources, targets = self._pairs(batch)
        sources = [str(s) for s in sources]
        encoded = self.tokenizer([self.source_prefix + s for s in sources], truncation=True, max_length=self.max_length,
                                 return_token_type_ids=False)
        encoded[SOURCE] = sources
        if targets is not None:
            targets = [str(t) for t in targets]
            encoded["labels"] = self.tokenizer(text_target=targets, truncation=True, max_length=self.max_target_length,
                                               return_token_type_ids=False)["input_ids"]
            encoded[REFERENCE] = targets
        return encoded

    def encode(self, row: Mapping[str, Any], target: str | None) -> Encoded:
        """Decoders: one row's prompt ids, their labels and its completion ids (``tunelab.data.prompts``)."""
        prompt, completion = self.prompt.encode(self.tokenizer, row, target)
        return prompt, [IGNORE_INDEX] * len(prompt), completion

    uses_conversations = False  # rows are chat conversations, without a source text to shorten

    def completion_room(self, completion: list[int]) -> int:
        """Decoders: the tokens a prompt leaves free within ``max_length`` for its (already cut) completion."""
        return len(completion)

    def _shorten_source(self, row: dict[str, Any], target: str | None, room: int) -> tuple[list[int], list[int]]:
        """The prompt of ``row`` with its source text cut at the end until the prompt fits ``room`` tokens
        (the instructions around the source stay whole)."""
        source_ids = self.tokenizer(row[SOURCE_FIELD], add_special_tokens=False)["input_ids"]
        prompt, labels, _ = self.encode(row, target)
        keep = len(source_ids)
        while len(prompt) > room and keep > 0:
            keep = max(0, keep - (len(prompt) - room))
            shorter = {**row, SOURCE_FIELD: self.tokenizer.decode(source_ids[:keep])}
            prompt, labels, _ = self.encode(shorter, target)
        return prompt, labels

    def _tokenize_prompts(self, batch: dict[str, list]) -> dict[str, list]:
        """Decoders: prompt + completion ids, labels on the completion only; completions cut to
        ``max_target_length`` and then prompts to what is left of ``max_length`` (the source's end by
        default, or the prompt's start)."""
        sources, targets = self._pairs(batch)
        columns = [c for c in batch if c != ROW]
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", _PROMPT_LENGTH, _PROMPT_CUT, _TARGET_CUT)}
        if targets is not None:
            out["labels"] = []
        for i, source in enumerate(sources):
            row = {**{c: batch[c][i] for c in columns}, SOURCE_FIELD: str(source)}
            target = None if targets is None else str(targets[i])
            prompt, prompt_labels, completion = self.encode(row, target)
            target_cut = max(0, len(completion) - self.max_target_length)
            completion = completion[:self.max_target_length]
            room = max(1, self.max_length - self.completion_room(completion))
            prompt_cut = max(0, len(prompt) - room)
            if prompt_cut and self.prompt.truncation == "source" and not self.uses_conversations:
                prompt, prompt_labels = self._shorten_source(row, target, room)
            start = max(0, len(prompt) - room)  # what still does not fit loses the prompt's start
            prompt, prompt_labels = prompt[start:], prompt_labels[start:]
            out["input_ids"].append(prompt + completion)
            out["attention_mask"].append([1] * (len(prompt) + len(completion)))
            out[_PROMPT_LENGTH].append(len(prompt))
            out[_PROMPT_CUT].append(prompt_cut)
            out[_TARGET_CUT].append(target_cut)
            if targets is not None:
                out["labels"].append(prompt_labels + completion)
        out[ROW] = batch[ROW]
        out[SOURCE] = [str(s) for s in sources]
        if targets is not None:
            out[REFERENCE] = [str(t) for t in targets]
        return out

    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        if not self.decoder:
            return super().featurize(ds, split)
        features = ds.map(self.tokenize, batched=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")
        for column, what, limit in ((_TARGET_CUT, "completions", f"task.data.max_target_length={self.max_target_length}"),
                                    (_PROMPT_CUT, "prompts", f"task.data.max_length={self.max_length} minus the completion")):
            cut = [i for i, n in enumerate(features[column]) if n]
            if not cut:
                continue
            rows = self.rows(features, split, cut)
            if column == _PROMPT_CUT and self.prompt.truncation == "error":
                raise DataError(
                    f"{len(cut)} prompts of split '{split}' ({self.origin[split]}) are longer than {limit}: {rows}; "
                    f"shorten them, raise the limit, or set task.data.prompt.truncation=source (cut the source's end) "
                    f"or start (cut the prompt's start)"
                )
            tokens = sum(features[column][i] for i in cut)
            log.warning("split '%s': %d of %d %s longer than %s, cut (%d tokens%s): %s", split, len(cut), len(features),
                        what, limit, tokens, f", {CUT_FROM[self.prompt.truncation]}" if column == _PROMPT_CUT else "", rows)
        return features.remove_columns([ROW, _PROMPT_CUT, _TARGET_CUT])

    # Feature columns that travel in the batch's meta as lists, not to the model (texts for metrics and samples).
    meta_columns: tuple[str, ...] = (SOURCE, REFERENCE)

    def _meta(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: [f[k] for f in features] for k in self.meta_columns if k in features[0]}

    def collate_fn(self) -> Callable:
        if self.decoder:
            return self._collate_prompts
        pad = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of)

        def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
            meta = self._meta(features)
            batch = pad([{k: v for k, v in f.items() if k not in self.meta_columns} for f in features])
            if batch.get("labels", 0) is None:  # the collator sets labels=None for unlabelled features
                del batch["labels"]
            return with_meta(batch, meta)

        return collate

    def _collate_prompts(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Decoders: sequences right-padded (labels with ``IGNORE_INDEX``), or packed into one row, for the loss,
        and their prompts left-padded in ``meta`` for batched generation."""
        meta = self._meta(features)
        pad = self.tokenizer.pad
        prompts = pad([{"input_ids": f["input_ids"][:f[_PROMPT_LENGTH]]} for f in features], padding_side="left",
                      return_tensors="pt")
        meta[PROMPT_IDS], meta[PROMPT_MASK] = prompts["input_ids"], prompts["attention_mask"]
        if self.packing and "labels" in features[0]:
            return with_meta(pack(features), meta)
        sequences = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
        batch = dict(pad(sequences, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"))
        if "labels" in features[0]:
            labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
            for i, f in enumerate(features):
                labels[i, :len(f["labels"])] = torch.tensor(f["labels"])
            batch["labels"] = labels
        return with_meta(batch, meta)
