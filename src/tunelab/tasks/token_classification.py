"""Token classification (NER and other tagging) with ``AutoModelForTokenClassification``.

Each word is tagged by its first sub-token's prediction; entity precision/recall/F1 (micro and per
type, as ``seqeval`` computes them) and word accuracy are computed over whole sentences, whose
windows may arrive in different batches and ranks (``tunelab.metrics.entities``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput

from tunelab.batch import META, model_inputs
from tunelab.metrics.entities import EntityMetrics, entities
from tunelab.tasks.loss import ClassifierModule, cross_entropy


class TokenClassificationModule(ClassifierModule):
    """Tags words with ``labels`` (tag names in id order, e.g. ``O, B-PER, I-PER``).

    Args:
        entity_mode: ``default`` (seqeval's default, conlleval-style: a broken ``I-`` still starts an
            entity) or ``strict`` (only entities well formed in ``tag_scheme``).
        tag_scheme: IOB1, IOB2 or BIOES (the datamodule's; needed by ``strict``).
        num_samples: test sentences (the first rows) written to ``samples/<test set>.jsonl``.
        **kwargs: ``loss`` (``task.loss``, see ``tunelab.tasks.loss``), and ``TaskModule``'s.
    """

    auto_model_class = AutoModelForTokenClassification

    def __init__(self, labels: Sequence[str], model: Mapping[str, Any], optimizer: Mapping[str, Any],
                 entity_mode: str = "default", tag_scheme: str | None = None, num_samples: int = 100, **kwargs: Any):
        super().__init__(labels=labels, model=model, optimizer=optimizer, **kwargs)
        self.num_samples = num_samples

    def build_metrics(self) -> MetricCollection:
        """``precision``, ``recall``, ``f1`` (entities, micro), ``accuracy`` (words), ``f1/<type>``, ..."""
        return MetricCollection({"entity": EntityMetrics(self.labels, self.hparams.entity_mode, self.hparams.tag_scheme)})

    def word_predictions(self, logits: torch.Tensor, meta: Mapping[str, list]) -> list[list[int]]:
        """Per window, the predicted tag id of each word it scores (``O`` for a word without sub-tokens)."""
        predicted = logits.argmax(-1).tolist()
        outside = self.labels.index("O") if "O" in self.labels else 0
        return [[row[p] if p >= 0 else outside for p in positions]
                for row, positions in zip(predicted, meta["positions"], strict=True)]

    def forward(self, batch: dict[str, Any]) -> TokenClassifierOutput:
        """Logits of the input's own positions and their loss. Prompt-learning methods prepend virtual
        tokens, which peft leaves out of the labels (its loss would fail): the loss is computed here,
        as transformers' token classifiers compute it (cross-entropy over the labelled positions)."""
        outputs = self.model(**model_inputs(batch, targets=False), **self.forward_kwargs)
        logits = outputs.logits[:, -batch["input_ids"].size(1):]
        labels = batch.get("labels")
        loss = None if labels is None else cross_entropy(logits, labels)
        return TokenClassifierOutput(loss=loss, logits=logits)

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        meta = batch[META]
        predicted = self.word_predictions(outputs.logits, meta)
        sentence = [e for e, ids in zip(meta["example_id"], meta["word_ids"], strict=True) for _ in ids]
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        metrics["entity"].update(as_tensor(sentence), as_tensor([w for ids in meta["word_ids"] for w in ids]),
                                 as_tensor([t for row in predicted for t in row]),
                                 as_tensor([t for row in meta["word_tags"] for t in row]))
        if self.num_samples and self.trainer.testing:
            self._keep_samples(stage, meta, predicted)

    # --- test samples ---------------------------------------------------------------------------
    def _keep_samples(self, stage: str, meta: Mapping[str, list], predicted: list[list[int]]) -> None:
        kept = self._sample_words.setdefault(stage, {})
        for i, example in enumerate(meta["example_id"]):
            if example < self.num_samples:
                words = kept.setdefault(example, {})
                for w, word, gold, tag in zip(meta["word_ids"][i], meta["words"][i], meta["word_tags"][i], predicted[i],
                                              strict=True):
                    words[w] = (word, self.labels[gold], self.labels[tag])

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._sample_words: dict[str, dict[int, dict[int, tuple[str, str, str]]]] = {}

    def on_test_epoch_end(self) -> None:
        for stage, by_example in self._sample_words.items():
            rows = []
            for example, words in sorted(by_example.items()):
                tokens, gold, predicted = zip(*(words[w] for w in sorted(words)), strict=True)
                rows.append({"row": example, "tokens": list(tokens), "gold": list(gold), "predicted": list(predicted),
                             "gold_entities": [list(e) for e in entities(gold)],
                             "predicted_entities": [list(e) for e in entities(predicted)]})
            self.add_samples(stage, rows)
        super().on_test_epoch_end()

    # --- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        meta = batch[META]
        logits = self(model_inputs(batch, targets=False)).logits
        return {"example_id": meta["example_id"], "word_ids": meta["word_ids"],
                "predicted": self.word_predictions(logits, meta)}

    def predictions_table(self, batches: list[dict[str, Any]], order: list[int]) -> dict[str, list]:
        """``predicted_tags`` per input row (one per word). Windows carry their row, so ``order`` is not needed."""
        by_row: dict[int, dict[int, int]] = {}
        for b in batches:
            for example, words, tags in zip(b["example_id"], b["word_ids"], b["predicted"], strict=True):
                by_row.setdefault(example, {}).update(zip(words, tags, strict=True))
        if sorted(by_row) != list(range(len(by_row))):
            raise RuntimeError(f"predictions cover rows {sorted(by_row)[:5]}..., not every input row once")
        return {"predicted_tags": [[self.labels[t] for _, t in sorted(by_row[r].items())] for r in range(len(by_row))]}
