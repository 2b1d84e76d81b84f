"""Few-shot prompts (task.data.prompt.shots): solved train rows before each row, as text or as chat turns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.decoder_fixtures import tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import SEQ2SEQ_FAST, pairs_csv, tiny_t5  # noqa: F401
from tests.tasks.test_decoder_generation import TEMPLATE, decoder_overrides, setup_parts
from tunelab.data.seq2seq import PROMPT_EXAMPLES, Seq2SeqDataModule
from tunelab.errors import ConfigError, DataError
from tunelab.exported import read_export_info
from tunelab.models import load_tokenizer
from tunelab.predict import predict
from tunelab.train import build_datamodule, run

pytestmark = pytest.mark.usefixtures("one_thread")
LONG = "task.data.max_length=200"  # room for the shots


def prompt_text(datamodule, tokenizer, split: str, i: int) -> str:
    feature = datamodule.features[split][i]
    return tokenizer.decode(feature["input_ids"][:feature["prompt_length"]])


def test_shots_are_train_rows_shown_before_every_row(tiny_llama: Path, pairs_csv: Path, tmp_path: Path,  # noqa: F811
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"):
        _, tokenizer, datamodule, _ = setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.shots=2", LONG)
    shots = datamodule.prompt.examples
    assert len(shots) == 2 and "few-shot prompts: 2 examples from split 'train'" in caplog.text
    train = pd.read_csv(pairs_csv)
    for shot in shots:  # real rows of the user's file, with their own answers
        assert ((train["source"] == shot["source"]) & (train["target"] == shot["target"])).any()
        assert shot["completion"] == shot["target"]
    expected_shots = "".join(f"{TEMPLATE.format(source=s['source'])} {s['completion']}\n\n" for s in shots)
    for split in ("validation", "test"):
        row = datamodule.examples[split][0]
        assert prompt_text(datamodule, tokenizer, split, 0) == expected_shots + TEMPLATE.format(source=row["source"])
    again = setup_parts(tmp_path / "again", tiny_llama, pairs_csv, "task.data.prompt.shots=2", LONG)[2].prompt.examples
    other = setup_parts(tmp_path / "other", tiny_llama, pairs_csv, "task.data.prompt.shots=2", "task.data.data_seed=7", LONG)[2]
    assert again == shots and other.prompt.examples != shots  # drawn with task.data.data_seed
    short = setup_parts(tmp_path / "short", tiny_llama, pairs_csv, "task.data.prompt.shots=2",
                        "task.data.prompt.shot_max_tokens=2", LONG)[2].prompt.examples
    for whole, cut in zip(shots, short, strict=True):
        assert cut["completion"] == whole["completion"] and whole["source"].startswith(cut["source"])
        assert len(tokenizer(cut["source"], add_special_tokens=False)["input_ids"]) == 2


def test_chat_shots_are_earlier_user_and_assistant_turns(tiny_llama: Path, pairs_csv: Path, tmp_path: Path) -> None:  # noqa: F811
    _, tokenizer, datamodule, _ = setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.chat=true",
                                              "task.data.prompt.shots=2", "task.data.prompt.system='Write a headline.'", LONG)
    shots = datamodule.prompt.examples
    row = datamodule.examples["test"][0]
    messages = [{"role": "system", "content": "Write a headline."}]
    for shot in shots:
        messages += [{"role": "user", "content": TEMPLATE.format(source=shot["source"])},
                     {"role": "assistant", "content": shot["target"]}]
    messages.append({"role": "user", "content": TEMPLATE.format(source=row["source"])})
    assert prompt_text(datamodule, tokenizer, "test", 0) == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)


def test_given_examples_are_the_shots_and_bad_settings_fail_clearly(tiny_llama: Path, tiny_t5: Path, pairs_csv: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    given = "task.data.prompt.examples=[{source: 'apple pie',completion: 'fruit'}]"
    _, tokenizer, datamodule, _ = setup_parts(tmp_path, tiny_llama, pairs_csv, given, LONG)
    row = datamodule.examples["test"][0]
    assert prompt_text(datamodule, tokenizer, "test", 0) == (f"{TEMPLATE.format(source='apple pie')} fruit\n\n"
                                                             f"{TEMPLATE.format(source=row['source'])}")
    with pytest.raises(ConfigError, match=r"task.data.prompt.examples\[0\] lacks completion"):
        setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.examples=[{source: 'apple pie'}]")
    with pytest.raises(ConfigError, match=r"task.data.prompt.shots=3 but task.data.prompt.examples holds 1"):
        setup_parts(tmp_path, tiny_llama, pairs_csv, given, "task.data.prompt.shots=3")
    with pytest.raises(DataError, match=r"task.data.prompt.shots=1000, but split 'train' has 320 rows"):
        setup_parts(tmp_path, tiny_llama, pairs_csv, "task.data.prompt.shots=1000")
    cfg = compose_train(tmp_path / "t5", "task=parallel", f"task.data.source.data_files.train={pairs_csv}", "model=t5-small",
                        f"model.name_or_path={tiny_t5}", *SEQ2SEQ_FAST, "task.data.prompt.shots=2", LONG)
    with pytest.raises(ConfigError, match=r"few-shot prompts\) need a decoder"):
        build_datamodule(cfg, load_tokenizer(cfg.model))


def test_a_few_shot_evaluation_run_and_its_export_prompt_the_same(tiny_llama: Path, pairs_csv: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    evaluation = run(compose_train(tmp_path / "eval", *decoder_overrides(tiny_llama, pairs_csv, "train=false",
                                                                         "task.data.prompt.shots=2", LONG)))
    assert evaluation["test"]["rougeL"] >= 0 and not (tmp_path / "eval" / "model").exists()  # scored, nothing exported
    out = tmp_path / "tuned"
    run(compose_train(out, *decoder_overrides(tiny_llama, pairs_csv, "trainer.max_epochs=1", "task.data.prompt.shots=1", LONG)))
    shots = read_export_info(out / "model")[PROMPT_EXAMPLES]
    assert len(shots) == 1 and shots[0]["completion"]
    rows = pd.read_csv(pairs_csv).head(5)[["source"]]
    rows.to_csv(tmp_path / "new.csv", index=False)
    result = predict(out, tmp_path / "new.csv")
    assert result["rows"] == 5
    # the prompts of tunelab-predict show the run's shot, although the file to predict has no train split
    kwargs = Seq2SeqDataModule.prediction_kwargs({"prompt": {"template": TEMPLATE}}, ["source"],
                                                 json.loads((out / "model" / "tunelab.json").read_text()))
    assert kwargs["prompt"]["examples"] == shots


def test_classification_shots_take_the_classes_in_turn(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    from tests.tasks.test_generative_classification import LABELS
    from tests.tasks.test_generative_classification import setup_parts as classification_parts

    for shots in (2, 4, 7):
        (tmp_path / str(shots)).mkdir()
        _, datamodule, _ = classification_parts(tmp_path / str(shots), tiny_llama, "decoder", f"task.data.prompt.shots={shots}",
                                                "task.data.max_length=200")
        answers = [shot["completion"] for shot in datamodule.prompt.examples]
        counts = [answers.count(label) for label in LABELS]
        assert len(answers) == shots and max(counts) - min(counts) <= 1, answers  # no majority label to copy
