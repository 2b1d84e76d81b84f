"""Classification by generation: a decoder (``AutoModelForCausalLM``) or an encoder-decoder
(``AutoModelForSeq2SeqLM``) trained to write the label's name (the completion loss of ``Seq2SeqModule``),
and evaluated as a classifier.

``scoring: likelihood`` (the default) scores every label's completion (``tunelab.data.
GenerativeClassificationDataModule``'s candidates) as the answer to each example: the sum of its tokens'
log-probabilities (their mean with ``length_normalize``), and predicts the best. A decoder reads each prompt
once and every candidate after its key/value cache (PEFT prompt, prefix and p-tuning: each prompt + candidate
whole); an encoder-decoder encodes each input once and reads every candidate as its labels. A score equals
the one its prompt + candidate gets alone (tests: to 1e-5). ``scoring: generate``
generates freely (``generation``) and matches the output, stripped and case-insensitively, to a label
name; an output that matches none is wrong (a miss of its gold label, no label's false positive), and
``no_match`` is their share. Metrics are ``task=bbc-news``'s: accuracy, macro F1 / precision / recall,
per-class F1, MCC.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassStatScores
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from tunelab.batch import IGNORE_INDEX, META
from tunelab.data.generative_classification import GOLD
from tunelab.data.seq2seq import PROMPT_IDS, PROMPT_MASK, REFERENCE, SOURCE
from tunelab.errors import ConfigError
from tunelab.metrics.classification import classification_metrics, flatten_metrics
from tunelab.tasks.base import NO_KV_CACHE, in_row_order
from tunelab.tasks.seq2seq import Seq2SeqModule

SCORING = ("likelihood", "generate")
NO_MATCH = "no_match"  # generate: the share of outputs that name no label


def normalized(text: str) -> str:
    """How a generated output and a label name are compared: stripped, case-insensitive."""
    return text.strip().casefold()


class GenerativeClassificationModule(Seq2SeqModule):
    """Labels as generated answers.

    Args:
        labels: the label names in id order; ``candidates``: their completion token ids (both given by the
            datamodule).
        scoring: ``likelihood`` (score every label, predict the best) or ``generate`` (free generation,
            matched to a label name).
        length_normalize: likelihood: a label's mean log-probability per token instead of the sum.
        save_samples: test rows written to ``samples/<test set>.jsonl`` (``None``: all).
        **kwargs: see ``Seq2SeqModule`` (``generation``, ``architecture``, ...).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], candidates: Sequence[Sequence[int]],
                 model: Mapping[str, Any], optimizer: Mapping[str, Any], scoring: str = "likelihood",
                 length_normalize: bool = False, save_samples: int | None = 100, **kwargs: Any):
        if scoring not in SCORING:
            raise ConfigError(f"task.module.scoring must be one of {list(SCORING)}, got {scoring!r}")
        names = [normalized(str(label)) for label in labels]
        if scoring == "generate" and len(set(names)) < len(names):
            raise ConfigError(f"task.module.scoring=generate matches outputs to labels case-insensitively, but "
                              f"task.data.labels {list(labels)} holds names that differ only in case or spaces")
        super().__init__(tokenizer=tokenizer, model=model, optimizer=optimizer, save_samples=save_samples, **kwargs)

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.hparams.labels]

    @property
    def generates(self) -> bool:
        return self.hparams.scoring == "generate"

    # --- metrics ----------------------------------------------------------------------------------
    def build_metrics(self) -> MetricCollection:
        if not self.generates:
            return classification_metrics(len(self.labels))
        # One more class, last: outputs that name no label; its statistics give the macro averages over labels.
        metrics = classification_metrics(len(self.labels) + 1)
        metrics.add_metrics({"stats": MulticlassStatScores(len(self.labels) + 1, average="none")})
        return metrics

    def metric_values(self, metrics: MetricCollection) -> dict[str, float]:
        values = metrics.compute()
        if not self.generates:
            return flatten_metrics(values, self.labels)
        prefix, k = metrics.prefix or "", len(self.labels)
        stats = values.pop(f"{prefix}stats").double()
        tp, fp, _, fn, _ = stats[:k].unbind(-1)
        seen = (tp + fp + fn) > 0  # as torchmetrics' macro average: labels neither predicted nor present are left out

        def macro(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
            per_label = torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
            return per_label[seen].sum() / seen.sum().clamp(min=1)

        values[f"{prefix}macro_f1"] = macro(2 * tp, 2 * tp + fp + fn)
        values[f"{prefix}precision"] = macro(tp, tp + fp)
        values[f"{prefix}recall"] = macro(tp, tp + fn)
        values[f"{prefix}f1_per_class"] = values[f"{prefix}f1_per_class"][:k]
        no_match = stats[k, 1] / stats[:, 4].sum().clamp(min=1)  # the no-match class's false positives
        return {**flatten_metrics(values, self.labels), f"{prefix}{NO_MATCH}": no_match.item()}

    # --- scoring ----------------------------------------------------------------------------------
    def _candidate_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates right-padded (``IGNORE_INDEX``) to one length, and their mask."""
        candidates = self.hparams.candidates
        ids = torch.full((len(candidates), max(map(len, candidates))), IGNORE_INDEX, dtype=torch.long, device=device)
        for i, candidate in enumerate(candidates):
            ids[i, :len(candidate)] = torch.tensor(candidate, device=device)
        return ids, ids != IGNORE_INDEX

    def _keeps_logits(self) -> bool:
        """Whether the model's forward takes ``logits_to_keep`` (computes the head on the last positions only)."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return "logits_to_keep" in inspect.signature(model.forward).parameters

    def _prompt_learning(self) -> bool:
        """PEFT prompt, prefix and p-tuning put virtual tokens before every input: a computed prompt (or encoder
        output) cannot be reused, and each prompt + candidate is read whole."""
        return bool(getattr(getattr(self.model, "active_peft_config", None), "is_prompt_learning", False))

    @torch.no_grad()
    def label_scores(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[examples, labels]``: the log-probability of each label's completion after each example's prompt
        (summed over its tokens, or their mean with ``length_normalize``)."""
        candidates, mask = self._candidate_tensors(batch["input_ids"].device)
        if self.hparams.architecture != "decoder":
            log_probs = self._encoder_decoder_log_probs(batch, candidates)
        elif self._prompt_learning():
            log_probs = self._whole_sequence_log_probs(batch, candidates, mask)
        else:
            log_probs = self._cached_prompt_log_probs(batch, candidates, mask)
        scores = (log_probs * mask).sum(-1)
        return scores / mask.sum(-1) if self.hparams.length_normalize else scores

    def _cached_prompt_log_probs(self, batch: Mapping[str, Any], candidates: torch.Tensor,
                                 mask: torch.Tensor) -> torch.Tensor:
        """``[examples, labels, candidate positions]``: token log-probabilities of the candidates, a decoder reading
        each (left-padded) prompt once and every candidate after its key/value cache, as batched generation does."""
        prompts, prompt_mask = batch[META][PROMPT_IDS], batch[META][PROMPT_MASK]
        (b, _), (k, c) = prompts.shape, candidates.shape
        out = self.model(input_ids=prompts, attention_mask=prompt_mask, position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, **({"logits_to_keep": 1} if self._keeps_logits() else {}))
        first = F.log_softmax(out.logits[:, -1].float(), -1)[:, candidates[:, 0]]  # [b, k]: every candidate's first token
        if c == 1:
            return first[..., None]
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        inputs = candidates[:, :-1].clamp(min=0).repeat(b, 1)  # row i * k + j: example i, label j
        lengths = prompt_mask.sum(-1).repeat_interleave(k)[:, None]
        attention = torch.cat([prompt_mask.repeat_interleave(k, 0), mask[:, :-1].repeat(b, 1).long()], 1)
        logits = self.model(input_ids=inputs, attention_mask=attention, past_key_values=cache, use_cache=True,
                            position_ids=lengths + torch.arange(c - 1, device=inputs.device)).logits
        rest = F.log_softmax(logits.float(), -1).gather(2, candidates[:, 1:].clamp(min=0).repeat(b, 1)[..., None])[..., 0]
        return torch.cat([first.reshape(b * k, 1), rest], 1).view(b, k, c)

    def _whole_sequence_log_probs(self, batch: Mapping[str, Any], candidates: torch.Tensor,
                                  mask: torch.Tensor) -> torch.Tensor:
        """The same, each prompt + candidate one right-padded sequence (no token attends to padding, so each
        equals its sequence alone): for models that put virtual tokens before every input."""
        prompts, prompt_mask = batch[META][PROMPT_IDS], batch[META][PROMPT_MASK]  # left-padded
        (b, p), (k, c) = prompts.shape, candidates.shape
        lengths = prompt_mask.sum(-1)[:, None, None]  # [b, 1, 1]
        t = torch.arange(p + c, device=prompts.device)
        in_prompt = t < lengths
        prompt_tokens = prompts.gather(1, (p - lengths[:, 0] + t).clamp(max=p - 1))[:, None, :]  # [b, 1, p + c]
        offset = t - lengths  # position in the candidate
        at = offset.clamp(0, c - 1).expand(b, k, -1)
        candidate_tokens = candidates.clamp(min=0)[None].expand(b, -1, -1).gather(2, at)
        in_candidate = (offset >= 0) & (offset < c) & mask[None].expand(b, -1, -1).gather(2, at)
        ids = torch.where(in_prompt, prompt_tokens, torch.where(in_candidate, candidate_tokens, self.tokenizer.pad_token_id))
        # Logits from the shortest prompt's last token on: every candidate token is predicted there or later.
        keep = p + c - int(lengths.min()) + 1
        logits = self.model(input_ids=ids.view(b * k, -1), attention_mask=(in_prompt | in_candidate).view(b * k, -1).long(),
                            **NO_KV_CACHE, **({"logits_to_keep": keep} if self._keeps_logits() else {})).logits[:, -keep:]
        # the candidate's token j sits at lengths + j and is predicted by the logits at lengths + j - 1
        at = (lengths - 1 + torch.arange(c, device=ids.device) - (p + c - keep)).expand(b, k, -1).reshape(b * k, c)
        picked = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
        tokens = candidates.clamp(min=0).repeat(b, 1)
        return F.log_softmax(picked.float(), -1).gather(2, tokens[..., None])[..., 0].view(b, k, c)

    def _encoder_decoder_log_probs(self, batch: Mapping[str, Any], candidates: torch.Tensor) -> torch.Tensor:
        """The same for an encoder-decoder: each example's input (encoded once, unless virtual tokens are put
        before it) with every candidate as its labels."""
        b, (k, c) = batch["input_ids"].shape[0], candidates.shape
        inputs: dict[str, Any] = {"attention_mask": batch["attention_mask"].repeat_interleave(k, 0)}
        if self._prompt_learning():
            inputs["input_ids"] = batch["input_ids"].repeat_interleave(k, 0)
        else:
            encoded = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=encoded[0].repeat_interleave(k, 0))
        labels = candidates.repeat(b, 1)
        logits = self.model(**inputs, labels=labels, **NO_KV_CACHE).logits
        return F.log_softmax(logits.float(), -1).gather(2, labels.clamp(min=0)[..., None])[..., 0].view(b, k, c)

    def _match(self, outputs: list[str]) -> list[int]:
        """Generated outputs -> label indices; ``len(labels)`` for an output that names no label."""
        index = {normalized(label): i for i, label in enumerate(self.labels)}
        return [index.get(normalized(text), len(self.labels)) for text in outputs]

    def classify(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Predicted label indices (``len(labels)``: no match), with the per-label scores (likelihood) or the
        generated texts (generate)."""
        if self.generates:
            outputs = self.generate(batch)[0]
            return {"prediction": torch.tensor(self._match(outputs)), "output": outputs}
        scores = self.label_scores(batch)
        return {"prediction": scores.argmax(-1), "scores": scores}

    # --- steps ------------------------------------------------------------------------------------
    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        result = self.classify(batch)
        gold = torch.tensor(batch[META][GOLD], device=result["prediction"].device)
        metrics.update(result["prediction"], gold)
        kept = len(self.test_samples.get(stage, []))
        room = len(gold) if self.save_samples is None else max(0, self.save_samples - kept)
        names = [*self.labels, None]
        rows = []
        for i, (source, reference, predicted) in enumerate(zip(batch[META][SOURCE], batch[META][REFERENCE],
                                                               result["prediction"].tolist(), strict=True)):
            if i == room:
                break
            if self.generates:
                rows.append({"source": source, "reference": reference, "output": result["output"][i],
                             "prediction": names[predicted]})
            else:
                scores = dict(zip(self.labels, result["scores"][i].tolist(), strict=True))
                rows.append({"source": source, "reference": reference, "output": names[predicted], "scores": scores})
        self.add_samples(stage, rows)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.classify(batch)

    def predictions_table(self, batches: list[dict[str, Any]], order: list[int]) -> dict[str, list]:
        names = [*self.labels, None]
        table = {"prediction": in_row_order([names[i] for b in batches for i in b["prediction"].tolist()], order)}
        if self.generates:
            table["output"] = in_row_order([text for b in batches for text in b["output"]], order)
        else:  # softmax over the labels' scores: with summed log-probabilities, P(label | prompt, one of the labels)
            confidence = torch.cat([b["scores"].float().softmax(-1).max(-1).values for b in batches]).tolist()
            table["confidence"] = in_row_order(confidence, order)
        return table
