"""Text-to-text generation (summarization, translation, instructions): an encoder-decoder
(``AutoModelForSeq2SeqLM``: source -> target) or a decoder (``AutoModelForCausalLM``: prompt -> completion).

Training minimises the token cross-entropy of the reference (a decoder's: of the completion only);
validation and test also generate with the configured settings (``generation``: beams, max new
tokens, length penalty, ...), decode, and score the text with the task's metrics (ROUGE, SacreBLEU,
chrF). A decoder generates from the batch's left-padded prompts and only its new tokens are decoded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedTokenizerBase

from tunelab.batch import META, model_inputs
from tunelab.data.packing import check_packing_support
from tunelab.data.seq2seq import ALL_REFERENCES, PROMPT_EXAMPLES, PROMPT_IDS, PROMPT_MASK, REFERENCE, SOURCE
from tunelab.metrics.seq2seq import generation_metric_values, generation_metrics, update_generation_metrics
from tunelab.tasks.base import NO_KV_CACHE, TaskModule, in_row_order


class Seq2SeqModule(TaskModule):
    """An encoder-decoder that generates a target text from a source text.

    Args:
        tokenizer: decodes generated ids (given by the datamodule; not saved in hyperparameters).
        metrics: names from ``tunelab.metrics.seq2seq.GENERATION_METRICS``.
        rouge_keys: ROUGE variants to report (``rougeLsum`` needs nltk's punkt data).
        generation: ``model.generate`` arguments, e.g. ``{num_beams: 4, max_new_tokens: 64}``.
        data_generation: generation arguments the data implies (the target-language token; a decoder's
            stop tokens and pad token).
        architecture: ``encoder-decoder`` or ``decoder`` (``model.architecture``).
        packing: the data packs training batches (``task.data.packing``): checked against the model at the start.
        prompt_examples: the few-shot examples of the prompts (``task.data.prompt``), kept in the export so that
            ``tunelab-predict`` prompts as the run did.
        save_samples: test rows written to ``samples/<test set>.jsonl`` (``None``: all).
    """

    forward_kwargs = NO_KV_CACHE
    unsaved_arguments = ("tokenizer",)

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        metrics: Sequence[str] = ("rouge",),
        rouge_keys: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
        generation: Mapping[str, Any] | None = None,
        data_generation: Mapping[str, Any] | None = None,
        architecture: str = "encoder-decoder",
        packing: bool = False,
        prompt_examples: Sequence[Mapping[str, Any]] | None = None,
        save_samples: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        self.tokenizer = tokenizer
        self.generation = {**(generation or {}), **(data_generation or {})}
        self.save_samples = save_samples

    @property
    def auto_model_class(self) -> type:  # type: ignore[override]
        return AutoModelForCausalLM if self.hparams.architecture == "decoder" else AutoModelForSeq2SeqLM

    def export_extras(self) -> dict[str, Any]:
        examples = self.hparams.prompt_examples
        return {PROMPT_EXAMPLES: list(examples)} if examples else {}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.packing:
            check_packing_support(self.model)

    def build_metrics(self) -> MetricCollection:
        return generation_metrics(list(self.hparams.metrics), list(self.hparams.rouge_keys))

    def metric_values(self, metrics: MetricCollection) -> dict[str, float]:
        return generation_metric_values(metrics.compute())

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any]) -> tuple[list[str], torch.Tensor]:
        """Generated texts and their lengths in tokens (without padding and special tokens)."""
        if self.hparams.architecture == "decoder":
            prompts = batch[META][PROMPT_IDS]
            ids = self.model.generate(input_ids=prompts, attention_mask=batch[META][PROMPT_MASK], **self.generation)
            ids = ids[:, prompts.shape[1]:]  # the completion
        else:
            ids = self.model.generate(**model_inputs(batch, targets=False), **self.generation)
        special = torch.tensor(self.tokenizer.all_special_ids, device=ids.device)
        lengths = (~torch.isin(ids, special)).sum(-1)
        if self.hparams.architecture == "decoder":  # byte-level BPE: no clean-up; the completion's leading space goes
            return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)], lengths
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True), lengths

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        predictions, lengths = self.generate(batch)
        meta = batch[META]
        update_generation_metrics(metrics, predictions, meta[REFERENCE], lengths, meta.get(ALL_REFERENCES))
        kept = len(self.test_samples.get(stage, []))
        room = len(predictions) if self.save_samples is None else max(0, self.save_samples - kept)
        self.add_samples(stage, [
            {"source": s, "reference": r, "output": p}
            for s, r, p in list(zip(meta[SOURCE], meta[REFERENCE], predictions, strict=True))[:room]
        ])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, list[str]]:
        return {"prediction": self.generate(batch)[0]}

    def predictions_table(self, batches: list[dict[str, Any]], order: list[int]) -> dict[str, list]:
        return {"prediction": in_row_order([text for b in batches for text in b["prediction"]], order)}
