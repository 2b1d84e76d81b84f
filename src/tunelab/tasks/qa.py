"""Extractive question answering with ``AutoModelForQuestionAnswering`` (SQuAD 1.1 / 2.0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import MetricCollection
from transformers import AutoModelForQuestionAnswering

from tunelab.batch import META, model_inputs
from tunelab.metrics.qa import best_spans, choose_answers, null_scores, qa_metrics, span_text
from tunelab.tasks.base import TaskModule


class QuestionAnsweringModule(TaskModule):
    """Predicts answer spans; decodes each window's best span and scores examples across windows.

    Args:
        with_no_answer: SQuAD 2.0: "no answer" is a possible prediction (from the datamodule).
        n_best: start and end candidates per window (top-k each) searched for the best span.
        max_answer_length: longest answer in tokens.
        null_threshold: SQuAD 2.0: answer "no answer" when its score beats the best span's by more.
        num_samples: test examples (the first rows) written to ``samples/<test set>.jsonl``.
    """

    auto_model_class = AutoModelForQuestionAnswering

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        with_no_answer: bool = False,
        n_best: int = 20,
        max_answer_length: int = 30,
        null_threshold: float = 0.0,
        num_samples: int = 100,
        **kwargs: Any,
    ):
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.num_samples = num_samples
        self._sample_windows: dict[str, dict[int, list[dict[str, Any]]]] = {}

    @property
    def with_no_answer(self) -> bool:
        return self.hparams.with_no_answer

    @property
    def null_threshold(self) -> float:
        return self.hparams.null_threshold

    def build_metrics(self) -> MetricCollection:
        return qa_metrics(self.with_no_answer, self.null_threshold)

    def decode(self, outputs: Any, meta: Mapping[str, list]) -> dict[str, Any]:
        """Per window: its example, best span (score, text, first character) and no-answer score."""
        device = outputs.start_logits.device
        as_tensor = lambda key: torch.tensor(meta[key], device=device)  # noqa: E731
        score, start, end = best_spans(outputs.start_logits, outputs.end_logits, as_tensor("context_start"),
                                       as_tensor("context_end"), self.n_best, self.max_answer_length)
        null = null_scores(outputs.start_logits, outputs.end_logits, as_tensor("cls_index"))
        spans = [span_text(c, o, s, e, v) for c, o, s, e, v in
                 zip(meta["context"], meta["offset_mapping"], start.tolist(), end.tolist(), score.tolist(), strict=True)]
        return {
            "example_id": torch.tensor(meta["example_id"]),
            "span_score": score.cpu(),
            "null_score": null.cpu(),
            "text": [text for text, _ in spans],
            "answer_start": torch.tensor([begin for _, begin in spans]),
        }

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        meta = batch[META]
        decoded = self.decode(outputs, meta)
        metrics.update(example_id=decoded["example_id"].to(self.device), span_score=decoded["span_score"].to(self.device),
                       span_text=decoded["text"], null_score=decoded["null_score"].to(self.device),
                       answers=meta["answer_texts"])
        if self.trainer.testing and self.num_samples:
            self._keep_sample_windows(stage, decoded, meta)

    # --- test samples ---------------------------------------------------------------------------
    def _keep_sample_windows(self, stage: str, decoded: dict[str, Any], meta: Mapping[str, list]) -> None:
        windows = self._sample_windows.setdefault(stage, {})
        for i, example in enumerate(meta["example_id"]):
            if example < self.num_samples:
                windows.setdefault(example, []).append({
                    "span_score": float(decoded["span_score"][i]), "null_score": float(decoded["null_score"][i]),
                    "text": decoded["text"][i], "question": meta["question"][i], "context": meta["context"][i],
                    "references": meta["answer_texts"][i],
                })

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._sample_windows = {}

    def on_test_epoch_end(self) -> None:
        for stage, by_example in self._sample_windows.items():
            rows = []
            for example, windows in sorted(by_example.items()):
                answer = self._answers(
                    torch.full((len(windows),), example),
                    torch.tensor([w["span_score"] for w in windows]),
                    torch.tensor([w["null_score"] for w in windows]),
                    [w["text"] for w in windows],
                )
                first = windows[0]
                rows.append({"row": example, "question": first["question"], "context": first["context"],
                             "references": first["references"], "prediction": answer["answer"][0],
                             "score": answer["score"][0]})
            self.add_samples(stage, rows)
        super().on_test_epoch_end()

    # --- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.decode(self.model(**model_inputs(batch, targets=False)), batch[META])

    def _answers(self, example_id: torch.Tensor, span_score: torch.Tensor, null_score: torch.Tensor,
                 texts: list[str], answer_start: torch.Tensor | None = None) -> dict[str, list]:
        """Each example's answer across its windows, by ascending example id."""
        ids, span, null, no_answer = choose_answers(example_id, span_score, null_score, self.with_no_answer,
                                                    self.null_threshold)
        starts = answer_start if answer_start is not None else torch.full_like(example_id, -1)
        pick = torch.where(no_answer, null, span).tolist()
        return {
            "example_id": ids.tolist(),
            "answer": ["" if none else texts[i] for i, none in zip(pick, no_answer.tolist(), strict=True)],
            "answer_start": [-1 if none else int(starts[i]) for i, none in zip(pick, no_answer.tolist(), strict=True)],
            "score": [float(null_score[i] if none else span_score[i]) for i, none in zip(pick, no_answer.tolist(), strict=True)],
        }

    def predictions_table(self, batches: list[dict[str, Any]], order: list[int]) -> dict[str, list]:
        """``answer`` ("" for no answer), ``answer_start`` (character, -1 for none) and ``score``
        (start + end logit of the answer, or the no-answer score) per input row. Windows carry
        their row (``example_id``), so ``order`` (of windows, not rows) is not needed."""
        answers = self._answers(
            torch.cat([b["example_id"] for b in batches]), torch.cat([b["span_score"] for b in batches]),
            torch.cat([b["null_score"] for b in batches]), [t for b in batches for t in b["text"]],
            torch.cat([b["answer_start"] for b in batches]),
        )
        ids = answers.pop("example_id")
        if ids != list(range(len(ids))):
            raise RuntimeError(f"predictions cover rows {ids[:5]}..., not every input row once")
        return answers
