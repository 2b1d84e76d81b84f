"""Language-modelling data: text rows -> blocks of ``block_size`` tokens for MLM or causal LM.

Rows are tokenized without truncation and, as in the Hugging Face ``run_mlm.py`` / ``run_clm.py``
examples, concatenated and cut into blocks (``group_texts``); the last, shorter block of each
``datasets.map`` batch is kept (and padded), so no text is lost. With ``group_texts=false`` each
row is cut into its own blocks and the blocks remember their row (per-row scores in prediction).

Targets:
- ``clm``: labels = input ids (the model shifts them); padding gets ``IGNORE_INDEX``.
- ``mlm``: ``DataCollatorForLanguageModeling`` masks 15% of the non-special tokens (80% [MASK],
  10% random, 10% kept). Training masks are drawn per batch from a generator seeded by the run's
  seed (reproducible, new masks every epoch). Validation and test blocks are masked once, when they
  are built, with a seed made of ``data_seed`` and the block's position: every epoch, checkpoint
  and run with the same data scores the same masked tokens, so their perplexities compare.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

import datasets
import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from tunelab.batch import IGNORE_INDEX, META
from tunelab.data.base import Column, TaskDataModule
from tunelab.data.checks import ROW, check_texts
from tunelab.errors import ConfigError, DataError
from tunelab.models import ensure_pad_token

log = logging.getLogger(__name__)

OBJECTIVES = ("mlm", "clm")


class LMCollator:
    """Pads blocks; masks them for MLM training when they carry no labels yet; puts row ids in ``meta``."""

    def __init__(self, pad: Callable, mask: Callable | None):
        self.pad = pad
        self.mask = mask

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        rows = [f["row"] for f in features] if "row" in features[0] else None
        features = [{k: v for k, v in f.items() if k != "row"} for f in features]
        collate = self.pad if "labels" in features[0] or self.mask is None else self.mask
        batch = dict(collate(features))
        if rows is not None:
            batch[META] = {"row": rows}
        return batch


class LanguageModelingDataModule(TaskDataModule):
    """Masked or causal language modelling on a text column (local text files, csv/json, Hub corpora).

    Args:
        objective: ``mlm`` (encoders: BERT, RoBERTa, MiniLM, ...) or ``clm`` (decoders: GPT-2, ...).
        text_column: the column holding the text (``text`` for .txt files: one row per line).
        block_size: tokens per block (the model's input length).
        group_texts: concatenate rows before cutting blocks (true), or cut each row on its own (false).
        mlm_probability: share of tokens masked for MLM.
        stratify_column: optional label column to stratify the carved validation/test rows by, so
            that they are the rows a classification task on the same data holds out (with the same
            ``data_seed``, sizes and label ids; labels are encoded in sorted order).
        **kwargs: see ``TaskDataModule`` (``max_length`` is ``block_size`` here).
    """

    augment_unsupported = "a language model learns the text itself, and would learn the copies' edits as language"
    columns = (Column("text_column", "the text scored (a .txt file: one row per line)"),)

    def __init__(
        self,
        *args: Any,
        objective: Literal["mlm", "clm"] = "mlm",
        text_column: str = "text",
        block_size: int = 128,
        group_texts: bool = True,
        mlm_probability: float = 0.15,
        stratify_column: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, max_length=block_size, **kwargs)
        if objective not in OBJECTIVES:
            raise ConfigError(f"task.data.objective must be one of {list(OBJECTIVES)}, got {objective!r}")
        limit = self.tokenizer.model_max_length
        if block_size < 2 or (limit < 1_000_000 and block_size > limit):
            raise ConfigError(
                f"task.data.block_size={block_size}: must be between 2 and the tokenizer's model_max_length ({limit})"
            )
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"task.data.mlm_probability must be in (0, 1), got {mlm_probability}")
        self.objective = objective
        self.text_column = text_column
        self.block_size = block_size
        self.group_texts = group_texts
        self.mlm_probability = mlm_probability
        self.stratify_column = stratify_column
        self._prepare_tokenizer(self.tokenizer, objective)
        self._collator: LMCollator | None = None

    @staticmethod
    def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, objective: str) -> None:
        if objective == "mlm" and tokenizer.mask_token is None:
            raise ConfigError(
                f"task=mlm needs a tokenizer with a mask token, and {type(tokenizer).__name__} "
                f"({tokenizer.name_or_path}) has none: pick an encoder (model=minilm, bert, roberta, ...), "
                "or use task=clm for a decoder such as model=gpt2"
            )
        ensure_pad_token(tokenizer)

    # --- hooks ---------------------------------------------------------------------------------
    def module_kwargs(self) -> dict[str, Any]:
        return {"objective": self.objective}

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        """Score each row on its own (per-row perplexity); a .txt file's ``text`` column if the run's is absent."""
        kwargs: dict[str, Any] = {"group_texts": False, "stratify_column": None}
        if data_cfg.get("text_column", "text") not in columns and columns == ["text"]:
            kwargs["text_column"] = "text"
        return kwargs

    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        ds = check_texts(ds, {"text_column": self.text_column}, split, where, self.empty_text, self.numbering[split],
                         {"stratify_column": self.stratify_column} if self.stratify_column else None,
                         what="no text (e.g. blank lines)")
        if self.stratify_column and not isinstance(ds.features[self.stratify_column], datasets.ClassLabel):
            ds = ds.class_encode_column(self.stratify_column)
        return ds

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """Whole rows, untruncated (blocks are cut afterwards); special-token masks for MLM."""
        return self.tokenizer(batch[self.text_column], return_special_tokens_mask=self.objective == "mlm", verbose=False)

    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        blocks = ds.map(partial(self._blocks, split=split), batched=True, with_indices=True,
                        remove_columns=ds.column_names, desc=f"Tokenizing and grouping {split}")
        if len(blocks) == 0:
            raise DataError(f"split '{split}' gave no tokens: {self.origin.get(split, 'the data')}")
        return blocks

    def collate_fn(self) -> Callable:
        if self._collator is None:  # one per datamodule: the masking generator runs on across epochs
            pad = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=self.pad_to_multiple_of)
            mask = None
            if self.objective == "mlm":
                mask = DataCollatorForLanguageModeling(
                    self.tokenizer, mlm=True, mlm_probability=self.mlm_probability,
                    pad_to_multiple_of=self.pad_to_multiple_of, seed=self._mask_seed(),
                )
            self._collator = LMCollator(pad, mask)
        return self._collator

    # --- blocks --------------------------------------------------------------------------------
    def _mask_seed(self) -> int:
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        return self.seed + 1_000_003 * rank  # each rank draws its own masks

    def _blocks(self, batch: dict[str, list], indices: list[int], split: str) -> dict[str, list]:
        encoded = self.tokenize(batch)
        keys = list(encoded.keys())
        size = self.block_size
        out: dict[str, list] = {k: [] for k in keys}
        if self.group_texts:
            joined = {k: list(itertools.chain.from_iterable(encoded[k])) for k in keys}
            total = len(joined["input_ids"])
            for k in keys:
                out[k] = [joined[k][i : i + size] for i in range(0, total, size)]
        else:
            out["row"] = []
            for j, row in enumerate(indices):
                n = len(encoded["input_ids"][j])
                if n == 0:
                    where = self.numbering[split].describe([batch[ROW][j] if ROW in batch else row])
                    raise DataError(f"{where} of split '{split}' ({self.origin.get(split, 'the data')}) has no tokens "
                                    "after tokenization")
                for k in keys:
                    out[k].extend(encoded[k][j][i : i + size] for i in range(0, n, size))
                out["row"].extend([row] * len(range(0, n, size)))
        if self.objective == "clm":
            out["labels"] = [list(ids) for ids in out["input_ids"]]
        elif split != "train":
            self._mask_once(out, first_row=indices[0] if indices else 0)
            del out["special_tokens_mask"]
        return out

    def _mask_once(self, blocks: dict[str, list], first_row: int) -> None:
        """Fixed MLM masks for evaluation blocks, seeded by ``data_seed`` and the block's position."""
        masker = DataCollatorForLanguageModeling(self.tokenizer, mlm=True, mlm_probability=self.mlm_probability)
        inputs, labels = [], []
        for j, (ids, special) in enumerate(zip(blocks["input_ids"], blocks["special_tokens_mask"], strict=True)):
            seed = int(np.random.SeedSequence([self.data_seed, first_row, j]).generate_state(1)[0])
            masker.generator = torch.Generator().manual_seed(seed)
            masked, target = masker.torch_mask_tokens(torch.tensor([ids]), special_tokens_mask=torch.tensor([special]))
            inputs.append(masked[0].tolist())
            labels.append(target[0].tolist())
        blocks["input_ids"], blocks["labels"] = inputs, labels
