"""Generative tasks on decoder LLMs (tiny Llama and Qwen2): prompt -> completion with the loss on the
completion only (checked against a loss computed by hand), batched left-padded generation equal to one
example at a time, chat templates, and a whole run: train -> evaluate -> export -> reload -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tests.decoder_fixtures import IM_END, IM_START, tiny_decoder, tiny_llama, tiny_llama_no_pad  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import SEQ2SEQ_FAST, make_pairs, pairs_csv  # noqa: F401
from tunelab.batch import IGNORE_INDEX, META
from tunelab.data.seq2seq import PROMPT_IDS, PROMPT_MASK
from tunelab.errors import ConfigError, DataError
from tunelab.models import load_tokenizer
from tunelab.predict import predict
from tunelab.train import build_datamodule, build_module, run

pytestmark = pytest.mark.usefixtures("one_thread")
TEMPLATE = "Text: {source}\nHeadline:"


def decoder_overrides(model: Path, data: Path, *extra: str) -> list[str]:
    """A fast run of a tiny decoder on local pairs (task=parallel), greedy decoding."""
    return [
        "task=parallel", f"task.data.source.data_files.train={data}", "model=gpt2", f"model.name_or_path={model}",
        "model.name=tiny-decoder", *SEQ2SEQ_FAST, "task.data.max_length=48", f"task.data.prompt.template={TEMPLATE!r}",
        *extra,
    ]


def setup_parts(tmp_path: Path, model: Path, data: Path, *extra: str):
    cfg = compose_train(tmp_path / "run", *decoder_overrides(model, data, *extra))
    tokenizer = load_tokenizer(cfg.model)
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule).eval()
    return cfg, tokenizer, datamodule, module


def first_batch(datamodule, split: str = "validation") -> dict:
    loader = datamodule.val_dataloader() if split == "validation" else datamodule.train_dataloader()
    return next(iter(loader))


def test_loss_is_the_completion_only_cross_entropy_computed_by_hand(tiny_decoder: Path, pairs_csv: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    _, tokenizer, datamodule, module = setup_parts(tmp_path, tiny_decoder, pairs_csv)
    batch = first_batch(datamodule)
    sources, targets = batch[META]["source_text"], batch[META]["reference_text"]
    total, count = 0.0, 0
    with torch.no_grad():
        for source, target in zip(sources, targets, strict=True):
            prompt = tokenizer(TEMPLATE.format(source=source))["input_ids"]
            completion = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            logits = module.model(input_ids=torch.tensor([prompt + completion])).logits[0]
            # the token at position t is predicted from the logits at t - 1; only completion tokens count
            log_probs = F.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
            total -= log_probs[torch.arange(len(completion)), torch.tensor(completion)].sum().item()
            count += len(completion)
        loss = module(batch).loss.item()
    assert loss == pytest.approx(total / count, rel=1e-5)
    labels = batch["labels"]
    assert (labels != IGNORE_INDEX).sum().item() == count  # prompt and padding positions are not targets
    assert batch["attention_mask"][:, 0].all()  # sequences padded on the right for the loss


def test_batched_left_padded_generation_equals_one_example_at_a_time(tiny_decoder: Path, pairs_csv: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """The fixture's random decoder (small weights, tied embeddings) repeats a prompt's last token, so every
    prompt here, ending in 'Headline:', gives '::::::', padded or not, pads attended to or not. Redrawn larger
    weights make each completion depend on the whole prompt, so that a pad or a shifted position shows."""
    _, _, datamodule, module = setup_parts(tmp_path, tiny_decoder, pairs_csv, "task.module.generation.max_new_tokens=6")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in module.model.parameters() if p.dim() == 2):  # embeddings and projections
            weight.normal_(0, 0.3, generator=generator)
    batch = first_batch(datamodule)
    prompts, mask = batch[META][PROMPT_IDS], batch[META][PROMPT_MASK]
    assert mask[:, -1].all() and not mask.all()  # left padding: every prompt ends at the last position
    together, lengths = module.generate(batch)
    alone = []
    for i in range(len(prompts)):
        real = prompts[i][mask[i].bool()].unsqueeze(0)
        one = {**batch, META: {**batch[META], PROMPT_IDS: real, PROMPT_MASK: torch.ones_like(real)}}
        alone.extend(module.generate(one)[0])
    assert together == alone
    assert (lengths > 0).all() and all(together)  # every example generates tokens other than eos and pad
    assert len(set(together)) > len(together) // 2  # and most their own text


def test_chat_template_marks_the_assistant_turn_as_the_completion(tiny_llama: Path, pairs_csv: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    _, tokenizer, datamodule, module = setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.chat=true",
                                                   "task.data.prompt.system='Write a headline.'")
    feature = datamodule.features["validation"][0]
    source, target = datamodule.examples["validation"][0]["source"], datamodule.examples["validation"][0]["target"]
    text = tokenizer.decode(feature["input_ids"])
    assert text == (f"{IM_START}system\nWrite a headline.{IM_END}\n{IM_START}user\n{TEMPLATE.format(source=source)}{IM_END}\n"
                    f"{IM_START}assistant\n{target}{IM_END}\n")
    completion = [t for t in feature["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == f"{target}{IM_END}\n"
    assert module.generation["eos_token_id"] == [tokenizer.convert_tokens_to_ids(IM_END)]  # stops at the end of turn


def test_chat_without_a_chat_template_and_a_template_naming_a_missing_column_fail_clearly(
        tiny_llama_no_pad: Path, tiny_llama: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"task.data.prompt.chat=true, but tokenizer .* has no chat template"):
        setup_parts(tmp_path, tiny_llama_no_pad, pairs_csv, "task.data.prompt.chat=true")
    with pytest.raises(DataError, match=r"task.data.prompt.template names \{title\}, which split 'train' of .*pairs.csv "
                                        r"lacks; its columns are \['source', 'target'\]"):
        setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.template='{title}: {source}'")


def test_long_prompts_lose_the_source_end_or_their_start_counted_or_are_refused(
        tiny_llama: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    rows = make_pairs(40)
    rows.loc[3, "source"] = " ".join(["apple orange banana"] * 30)  # about 90 words: longer than max_length=48
    data = tmp_path / "long.csv"
    rows.to_csv(data, index=False)

    def the_long_one(*extra: str) -> tuple[list[int], list[int]]:
        caplog.clear()
        with caplog.at_level("WARNING"):
            _, tokenizer, datamodule, _ = setup_parts(tmp_path, tiny_llama, data, *extra)
        assert "file line 5" in caplog.text  # data row 4 of the csv, under its header line
        features = [f for split in datamodule.features.values() for f in split]
        assert max(len(f["input_ids"]) for f in features) == 48
        long = next(f for f in features if len(f["input_ids"]) == 48)
        completion = [t for t in long["labels"] if t != IGNORE_INDEX]
        assert completion[-1] == tokenizer.eos_token_id  # the completion is whole
        return tokenizer, long["input_ids"][:long["prompt_length"]]

    tokenizer, prompt = the_long_one()  # default: the source's end goes, the template around it stays
    text = tokenizer.decode(prompt)
    assert "prompts longer than task.data.max_length=48 minus the completion, cut" in caplog.text
    assert "from the source's end" in caplog.text
    assert text.startswith("Text: apple orange banana") and text.endswith("\nHeadline:")
    tokenizer, prompt = the_long_one("task.data.prompt.truncation=start")
    assert "from the prompt's start" in caplog.text
    assert not tokenizer.decode(prompt).startswith("Text:") and tokenizer.decode(prompt).endswith("\nHeadline:")
    with pytest.raises(DataError, match=r"1 prompts of split '.*' .* are longer than task.data.max_length=48.*file line 5"):
        setup_parts(tmp_path, tiny_llama, data, "task.data.prompt.truncation=error")


@pytest.fixture(scope="module")
def decoder_run(tiny_decoder: Path, pairs_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    out = tmp_path_factory.mktemp("decoder-run") / "run"
    return out, run(compose_train(out, *decoder_overrides(tiny_decoder, pairs_csv, "trainer.max_epochs=6", "optimizer.lr=1e-2")))


def test_a_tiny_decoder_learns_the_completion(decoder_run: tuple[Path, dict]) -> None:
    run_dir, metrics = decoder_run
    frame = pd.read_csv(run_dir / "logs" / "metrics.csv")
    val = frame.dropna(subset=["val/rougeL"])
    assert val["val/loss"].iloc[-1] < 0.5 * val["val/loss"].iloc[0]
    assert metrics["test"]["rougeL"] > 0.4 and metrics["test"]["chrf"] > 0.4
    samples = [json.loads(line) for line in (run_dir / "samples" / "test.jsonl").read_text().splitlines()]
    assert len(samples) == metrics["data"]["test"] and all(s["output"] == s["output"].strip() for s in samples)


def test_decoder_export_generates_the_same_in_plain_transformers_and_the_pipeline(decoder_run: tuple[Path, dict]) -> None:
    run_dir, _ = decoder_run
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    prompt = TEMPLATE.format(source=make_pairs(1, seed=5)["source"][0])
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    plain = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    generator = pipeline("text-generation", model=str(run_dir / "model"), tokenizer=str(run_dir / "model"))
    piped = generator(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert piped == plain and plain.strip()


def test_predict_generates_for_a_file_of_prompts(decoder_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, _ = decoder_run
    rows = make_pairs(20, seed=9)
    data = tmp_path / "new.csv"
    rows.to_csv(data, index=False)
    result = predict(run_dir, data, tmp_path / "out.jsonl")
    out = pd.read_json(result["predictions"], lines=True)
    assert out["source"].tolist() == rows["source"].tolist()
    assert result["metrics"]["rougeL"] > 0.4
    rows[["source"]].to_csv(data, index=False)  # prompts only
    result = predict(run_dir, data, tmp_path / "out2.csv")
    assert "metrics" not in result and pd.read_csv(result["predictions"])["prediction"].notna().all()
