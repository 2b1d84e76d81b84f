"""Classification and regression on a decoder (tiny Llama, Qwen2, GPT-2): ``AutoModelForSequenceClassification``
scores the last non-pad token, so an example's logits must not depend on the padding around it (batches are
padded on the right whatever the tokenizer's padding side; left padding is also safe on rotary decoders); the
``score`` head trains and is saved with a PEFT adapter; a tokenizer without a pad token pads with eos, and the
export says so in its config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase, pipeline

from tests.conftest import make_rows, tiny_overrides
from tests.decoder_fixtures import build_tiny_decoder, tiny_decoder, tiny_llama_no_pad  # noqa: F401
from tests.helpers import compose_train
from tests.lm_fixtures import tiny_gpt2  # noqa: F401
from tests.tasks.test_regression import stsb_local
from tunelab.models import load_tokenizer
from tunelab.tasks import SequenceClassificationModule
from tunelab.train import build_datamodule, build_module, run

pytestmark = pytest.mark.usefixtures("one_thread")


def decoder_overrides(model: Path, data: Path, *extra: str) -> list[str]:
    """``tiny_overrides`` for a decoder checkpoint: the learnable csv, 4 epochs."""
    return tiny_overrides(model, data, "model.architecture=decoder", "trainer.max_epochs=4", *extra)


def logits_of(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-no-pad", "gpt2"])
def any_decoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny rotary decoders (Llama, Qwen2) with a pad token, a Llama whose tokenizer has none, and a GPT-2
    (absolute position embeddings)."""
    if request.param == "gpt2":
        return request.getfixturevalue("tiny_gpt2")
    architecture, _, no_pad = request.param.partition("-no-")
    return build_tiny_decoder(tmp_path_factory.mktemp(request.param), architecture, chat=not no_pad, pad=not no_pad)


def padding_case(model: Path, data: Path, tmp_path: Path, side: str
                 ) -> tuple[SequenceClassificationModule, PreTrainedTokenizerBase, list[dict], Callable]:
    """The module (a new head on ``model``), the tokenizer with ``padding_side=side``, 12 validation features
    of unequal lengths and the datamodule's collate function."""
    cfg = compose_train(tmp_path / "run", *decoder_overrides(model, data))
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = side
    dm = build_datamodule(cfg, tokenizer)
    dm.setup("fit")
    rows = [dm.features["validation"][i] for i in range(12)]
    return build_module(cfg, dm).eval(), tokenizer, rows, dm.collate_fn()


def last_token_logits(module: SequenceClassificationModule, rows: list[dict], collate: Callable) -> torch.Tensor:
    """Oracle: the head applied to the backbone's hidden state at each example's last token, one at a time."""
    model = module.model
    with torch.no_grad():
        last = [model.base_model(input_ids=collate([row])["input_ids"]).last_hidden_state[0, -1] for row in rows]
        return model.score(torch.stack(last))


@pytest.mark.parametrize("side", ["right", "left"])
def test_an_example_has_the_same_logits_alone_and_in_a_padded_batch(any_decoder: Path, side: str, learnable_csv: Path,
                                                                    tmp_path: Path) -> None:
    """Through the datamodule's batches, whatever the tokenizer's padding side: they are padded on the right
    (a left-padded GPT-2 would count positions from the padding)."""
    module, tokenizer, rows, collate = padding_case(any_decoder, learnable_csv, tmp_path, side)
    batch = collate(rows)
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max() and (batch["attention_mask"][:, 0] == 1).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    with torch.no_grad():
        together = module(batch)
        alone = [module(collate([row])) for row in rows]
    expected = last_token_logits(module, rows, collate)
    torch.testing.assert_close(torch.cat([out.logits for out in alone]), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.loss, torch.stack([out.loss for out in alone]).mean(), atol=1e-5, rtol=1e-4)


def test_rotary_decoders_classify_a_left_padded_batch_as_its_examples_alone(tiny_decoder: Path,  # noqa: F811
                                                                            learnable_csv: Path, tmp_path: Path) -> None:
    """As ``transformers.pipeline`` batches for an export whose tokenizer pads on the left: the classifier
    finds the last real token, and rotary positions are relative, so the padding in front changes nothing."""
    module, tokenizer, rows, collate = padding_case(tiny_decoder, learnable_csv, tmp_path, "left")
    batch = tokenizer.pad([{k: row[k] for k in ("input_ids", "attention_mask")} for row in rows], return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        logits = module.model(**batch).logits
    torch.testing.assert_close(logits, last_token_logits(module, rows, collate), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_decoder_classifier_trains_exports_and_reloads(method: str, tiny_decoder: Path, learnable_csv: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["tuning.merge_on_export=true", "optimizer.lr=5e-3"] if method == "lora" else []
    metrics = run(compose_train(out, *decoder_overrides(tiny_decoder, learnable_csv, f"tuning={method}", *extra)))
    epoch_loss = pd.read_csv(out / "logs" / "metrics.csv")["train/loss_epoch"].dropna().tolist()
    assert epoch_loss[-1] < 0.7 * epoch_loss[0]
    assert metrics["test"]["accuracy"] > 0.7, metrics["test"]  # chance is 1/3

    texts = make_rows(24, seed=7)["text"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    trained = SequenceClassificationModule.load_from_checkpoint(out / "checkpoints" / "best.ckpt").model
    expected = logits_of(trained, tokenizer, texts)
    if method == "lora":
        h, kv, r = 32, 16, 8  # hidden size; k/v width (2 key-value heads of 8); LoRA rank
        # LoRA on q_proj and v_proj of the 2 blocks, and the score head (3 x hidden, no bias), which trains
        assert metrics["params"]["trainable"] == 2 * r * ((h + h) + (h + kv)) + 3 * h
        adapter = load_file(out / "model" / "adapter_model.safetensors")
        head = [k for k in adapter if ".score." in k]
        assert head and any("lora_" in k for k in adapter), sorted(adapter)
        # plain peft on the original checkpoint: the trained head comes back with the adapter, not a random one
        base = AutoModelForSequenceClassification.from_pretrained(tiny_decoder, num_labels=3)
        torch.testing.assert_close(logits_of(PeftModel.from_pretrained(base, out / "model"), tokenizer, texts), expected)
        plain = out / "model" / "merged"
    else:
        plain = out / "model"
    reloaded = AutoModelForSequenceClassification.from_pretrained(plain)
    torch.testing.assert_close(logits_of(reloaded, tokenizer, texts), expected, atol=1e-5, rtol=1e-4)
    classify = pipeline("text-classification", model=str(plain), device="cpu", batch_size=8)
    labels = SequenceClassificationModule.load_from_checkpoint(out / "checkpoints" / "best.ckpt").labels
    assert [r["label"] for r in classify(texts)] == [labels[i] for i in expected.argmax(-1).tolist()]


def test_a_tokenizer_without_pad_token_trains_and_its_export_pads_with_eos(tiny_llama_no_pad: Path,  # noqa: F811
                                                                           learnable_csv: Path, tmp_path: Path) -> None:
    assert AutoTokenizer.from_pretrained(tiny_llama_no_pad).pad_token is None
    assert json.loads((tiny_llama_no_pad / "config.json").read_text()).get("pad_token_id") is None
    out = tmp_path / "run"
    metrics = run(compose_train(out, *decoder_overrides(tiny_llama_no_pad, learnable_csv)))
    assert metrics["test"]["accuracy"] > 0.7, metrics["test"]
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert json.loads((out / "model" / "config.json").read_text())["pad_token_id"] == tokenizer.eos_token_id
    texts = make_rows(12, seed=3)["text"].tolist()  # batched: a config without pad_token_id refuses batches > 1
    classify = pipeline("text-classification", model=str(out / "model"), device="cpu", batch_size=6)
    expected = logits_of(AutoModelForSequenceClassification.from_pretrained(out / "model"), tokenizer, texts)
    labels = [classify.model.config.id2label[i] for i in expected.argmax(-1).tolist()]
    assert [r["label"] for r in classify(texts)] == labels


def test_regression_on_a_decoder(tiny_decoder: Path, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "pairs.csv"
    cfg = compose_train(tmp_path / "run", *stsb_local(data), *decoder_overrides(tiny_decoder, data)[2:],
                        "trainer.max_epochs=6")
    metrics = run(cfg)
    assert metrics["test"]["pearson"] > 0.8 and metrics["test"]["spearman"] > 0.8, metrics["test"]
    assert metrics["test"]["mse"] < 1.0  # the scores' variance is 2
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression" and config["pad_token_id"] is not None

