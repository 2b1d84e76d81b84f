"""Instruction data: Alpaca-style rows and chat conversations on a tiny decoder with a ChatML template
(the loss covers every assistant turn and nothing else), malformed conversations named by row, and the
Chit-Chat reader."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CLASS_WORDS
from tests.decoder_fixtures import IM_END, IM_START, tiny_llama, tiny_qwen2  # noqa: F401
from tests.helpers import compose_train
from tunelab.batch import IGNORE_INDEX
from tunelab.data.sources.chitchat import chitchat
from tunelab.errors import ConfigError, DataError
from tunelab.models import load_tokenizer
from tunelab.predict import predict
from tunelab.train import build_datamodule, run

pytestmark = pytest.mark.usefixtures("one_thread")
TOPICS = list(CLASS_WORDS)


def alpaca_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """"name the topic" instructions with the words as input (blank input on every third row)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % 3]
        words = " ".join(rng.choice(CLASS_WORDS[topic]) for _ in range(3))
        if i % 3 == 2:
            rows.append({"instruction": f"the topic of {words}", "input": "", "output": CLASS_WORDS[topic][0]})
        else:
            rows.append({"instruction": "the topic", "input": words, "output": CLASS_WORDS[topic][0]})
    return rows


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Two-exchange conversations: the assistant names the topic of each user turn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        for _ in range(2):
            topic = rng.choice(TOPICS)
            messages += [{"role": "user", "content": " ".join(rng.choice(CLASS_WORDS[topic]) for _ in range(3))},
                         {"role": "assistant", "content": CLASS_WORDS[topic][0]}]
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instruct_overrides(model: Path, data: Path, *extra: str) -> list[str]:
    return [
        "task=instruct", f"task.data.source.data_files.train={data}", "model=gpt2", f"model.name_or_path={model}",
        "model.name=tiny-decoder", "progress=none", "logger=csv", "optimizer.lr=1e-2", "task.data.batch_size=16",
        "task.data.max_length=64", "task.data.max_target_length=24", "task.module.generation.max_new_tokens=6",
        "trainer.num_sanity_val_steps=0", "callbacks.early_stopping=null", "task.monitor=val/loss",
        "task.monitor_mode=min", *extra,
    ]


def datamodule_for(tmp_path: Path, model: Path, data: Path, *extra: str):
    cfg = compose_train(tmp_path / "run", *instruct_overrides(model, data, *extra))
    tokenizer = load_tokenizer(cfg.model)
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.setup("fit")
    return tokenizer, datamodule


def labelled_spans(labels: list[int]) -> list[list[int]]:
    """The runs of labelled (non-ignored) positions."""
    spans, current = [], []
    for token in labels:
        if token == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return [*spans, current] if current else spans


def test_alpaca_rows_read_as_a_chat_with_the_response_as_the_only_target(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(60))
    tokenizer, datamodule = datamodule_for(tmp_path, tiny_llama, data, "task.data.prompt.system='Name the topic.'")
    examples, features = datamodule.examples["train"], datamodule.features["train"]
    for example, feature in list(zip(examples, features, strict=True))[:6]:
        user = example["instruction"] + (f"\n\n{example['input']}" if example["input"] else "")
        assert tokenizer.decode(feature["input_ids"]) == (
            f"{IM_START}system\nName the topic.{IM_END}\n{IM_START}user\n{user}{IM_END}\n"
            f"{IM_START}assistant\n{example['output']}{IM_END}\n")
        assert [tokenizer.decode(s) for s in labelled_spans(feature["labels"])] == [f"{example['output']}{IM_END}\n"]


def test_a_conversation_is_learnt_on_every_assistant_turn(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_jsonl(tmp_path / "chats.jsonl", chat_rows(40))
    tokenizer, datamodule = datamodule_for(tmp_path, tiny_llama, data, "task.data.messages_column=messages")
    example, feature = datamodule.examples["validation"][0], datamodule.features["validation"][0]
    messages = example["messages"]
    assert tokenizer.decode(feature["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    answers = [f"{m['content']}{IM_END}\n" for m in messages if m["role"] == "assistant"]
    assert [tokenizer.decode(s) for s in labelled_spans(feature["labels"])] == answers
    # evaluation generates the last turn from the conversation before it
    prompt = feature["input_ids"][:feature["prompt_length"]]
    assert tokenizer.decode(prompt) == tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("messages,problem", [
    ([{"role": "user", "content": "apple"}, {"role": "robot", "content": "x"}], "message 2 has the unknown role 'robot'"),
    ([{"role": "user", "content": "apple"}], "the conversation has no assistant turn"),
    ([{"role": "user", "content": "apple"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
     "message 2 is a user turn where a assistant turn was expected"),
    ([{"role": "assistant", "content": "x"}], "message 1 is a assistant turn where a user turn was expected"),
])
def test_malformed_conversations_are_named_by_row(messages: list, problem: str, tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    rows = chat_rows(20)
    rows[6] = {"messages": messages}
    data = write_jsonl(tmp_path / "chats.jsonl", rows)
    with pytest.raises(DataError, match=rf"column 'messages' \(task.data.messages_column\) of split 'train' of .*chats.jsonl: "
                                        rf"1 conversations are malformed, e.g. .*line 7.*: {problem}"):
        datamodule_for(tmp_path, tiny_llama, data, "task.data.messages_column=messages")


def test_conversations_need_the_chat_template_on_a_decoder(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_jsonl(tmp_path / "chats.jsonl", chat_rows(20))
    with pytest.raises(ConfigError, match="holds chat conversations, which a decoder reads through its chat template"):
        datamodule_for(tmp_path, tiny_llama, data, "task.data.messages_column=messages", "task.data.prompt.chat=false")


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_qwen2"])
def test_instruction_run_trains_and_answers_a_file_of_conversations(model_fixture: str, request: pytest.FixtureRequest,
                                                                    tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_rows(240))
    out = tmp_path / "run"
    metrics = run(compose_train(out, *instruct_overrides(request.getfixturevalue(model_fixture), data, "task.data.messages_column=messages",
                                                          "trainer.max_epochs=10")))
    frame = pd.read_csv(out / "logs" / "metrics.csv").dropna(subset=["val/loss"])
    assert frame["val/loss"].iloc[-1] < 0.6 * frame["val/loss"].iloc[0]
    assert metrics["test"]["rouge1"] > 0.5  # the one-word topic names of the last turns
    open_turns = [{"messages": r["messages"][:-1]} for r in chat_rows(10, seed=7)]  # they end with the user
    result = predict(out, write_jsonl(tmp_path / "ask.jsonl", open_turns), tmp_path / "answers.jsonl")
    answers = pd.read_json(result["predictions"], lines=True)
    assert "metrics" not in result and len(answers) == 10 and answers["prediction"].str.len().gt(0).all()


def test_chitchat_reader_makes_user_assistant_turns_ending_with_the_assistant(tmp_path: Path) -> None:
    def turn(sender: str, *texts: str) -> list[dict]:
        return [{"text": t, "sender": sender, "timestamp": "2018-05-02T19:38:15Z"} for t in texts]

    raw = {
        "a": {"messages": [turn("s1", "Hello", "How are you?"), turn("s2", "fine"), turn("s1", "good"), turn("s2", "bye"),
                           turn("s1", "see you")]},
        "b": {"messages": [turn("s1", "anyone there?")]},  # never answered: left out
        "c": {"messages": [turn("s1", "hi"), turn("s2", ""), turn("s1", "hello?"), turn("s2", "sorry")]},  # an empty turn
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    ds = chitchat(str(path)).splits["train"]
    assert ds["id"] == ["a", "c"]
    assert ds[1]["messages"] == [{"role": "user", "content": "hi\nhello?"}, {"role": "assistant", "content": "sorry"}]
    assert ds[0]["messages"] == [{"role": "user", "content": "Hello\nHow are you?"}, {"role": "assistant", "content": "fine"},
                                 {"role": "user", "content": "good"}, {"role": "assistant", "content": "bye"}]
    assert chitchat(str(path), max_turns=2).splits["train"][0]["messages"][-1] == {"role": "assistant", "content": "fine"}
    with pytest.raises(DataError, match="Chit-Chat file not found"):
        chitchat(str(tmp_path / "missing.json"))
