"""Classification by generation, the model side: likelihood scores equal plain transformers run on each prompt +
label alone (decoders and T5), metrics equal sklearn's (free generation's unmatched outputs included), and a tiny
Llama learns a toy task: train -> export -> tunelab-predict (labelled and unlabelled) -> generate-mode evaluation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from peft import PromptTuningConfig, get_peft_model
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

from tests.data.test_generative_classification import LABELS, topic_frame
from tests.decoder_fixtures import tiny_decoder, tiny_llama  # noqa: F401
from tests.helpers import compose_train
from tests.seq2seq_fixtures import tiny_t5  # noqa: F401
from tunelab.batch import META
from tunelab.data.generative_classification import GOLD
from tunelab.errors import ConfigError
from tunelab.models import load_tokenizer
from tunelab.predict import predict
from tunelab.train import build_datamodule, build_module, run

pytestmark = pytest.mark.usefixtures("one_thread")
TEMPLATE = "Text: {source}\nLabel:"


def overrides(model: Path, data: Path, architecture: str, *extra: str) -> list[str]:
    """task=bbc-news-gen on a local csv of ``topic_frame`` rows, on a tiny decoder or T5."""
    model_args = (["model=smollm2-135m", f"model.name_or_path={model}", f"task.data.prompt.template={TEMPLATE!r}"]
                  if architecture == "decoder" else ["model=t5-small", f"model.name_or_path={model}"])
    return [
        "task=bbc-news-gen", *model_args, "~task.data.source",
        f"+task.data.source={{_target_: tunelab.data.sources.load, path: csv, data_files: {{train: {data}}}}}",
        f"task.data.labels=[{','.join(LABELS)}]", "task.data.max_length=48", "progress=none", "logger=csv",
        "trainer.num_sanity_val_steps=0", "callbacks.early_stopping=null", *extra,
    ]


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def setup_parts(tmp_path: Path, model: Path, architecture: str, *extra: str):
    cfg = compose_train(tmp_path / "run", *overrides(model, write(topic_frame(60), tmp_path / "rows.csv"), architecture, *extra))
    tokenizer = load_tokenizer(cfg.model)
    datamodule = build_datamodule(cfg, tokenizer)
    datamodule.setup("fit")
    return tokenizer, datamodule, build_module(cfg, datamodule).eval()


def alone(module, tokenizer, text: str, label: str, architecture: str) -> list[float]:
    """Plain transformers on one example and one label: the label tokens' log-probabilities."""
    if architecture == "decoder":
        prompt = tokenizer(TEMPLATE.format(source=text))["input_ids"]
        completion = tokenizer(" " + label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        # from the end: a prompt-tuned model's logits start with its virtual tokens'
        logits = module.model(input_ids=torch.tensor([prompt + completion])).logits[0, -len(completion) - 1:-1]
    else:
        completion = tokenizer(text_target=label)["input_ids"]
        logits = module.model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]),
                              labels=torch.tensor([completion])).logits[0]
    return F.log_softmax(logits, -1)[torch.arange(len(completion)), torch.tensor(completion)].tolist()


def check_scores(tmp_path: Path, model: Path, architecture: str, *extra: str, wrap=lambda module: module) -> None:
    tokenizer, datamodule, module = setup_parts(tmp_path, model, architecture, *extra)
    module = wrap(module)
    batch = next(iter(datamodule.val_dataloader()))
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 2  # examples of different lengths in the batch
    with torch.no_grad():
        scores = module.label_scores(batch)
        module.hparams.length_normalize = True
        normalized = module.label_scores(batch)
        expected = [[alone(module, tokenizer, text, label, architecture) for label in LABELS] for text in batch[META]["source_text"]]
    assert scores.shape == (len(expected), len(LABELS))
    assert scores.flatten().tolist() == pytest.approx([sum(lp) for row in expected for lp in row], abs=1e-5)
    assert normalized.flatten().tolist() == pytest.approx([sum(lp) / len(lp) for row in expected for lp in row], abs=1e-5)


def test_decoder_likelihood_scores_equal_each_prompt_and_label_scored_alone(tiny_decoder: Path, tmp_path: Path) -> None:  # noqa: F811
    check_scores(tmp_path, tiny_decoder, "decoder")


def test_t5_likelihood_scores_equal_each_input_and_label_scored_alone(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    check_scores(tmp_path, tiny_t5, "encoder-decoder")


def test_prompt_tuned_decoders_score_each_prompt_and_label_whole(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    """PEFT prompt tuning puts virtual tokens before every input: no prompt is reused from a cache."""
    check_scores(tmp_path, tiny_llama, "decoder", "tuning=prompt")


def test_prompt_tuned_encoder_decoders_encode_each_input_whole(tiny_t5: Path, tmp_path: Path) -> None:  # noqa: F811
    """The same for an encoder-decoder, whose encoder output is then not reused (tuning=prompt refuses T5 at
    start-up for now: the model is wrapped here by hand)."""
    def prompt_tuned(module):
        module.model = get_peft_model(module.model, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4))
        assert module._prompt_learning()
        return module

    check_scores(tmp_path, tiny_t5, "encoder-decoder", wrap=prompt_tuned)


def sklearn_metrics(gold: list[int], predicted: list[int]) -> dict[str, float]:
    """sklearn over the labels (a prediction of -1, no label, is a miss of its gold label and nobody's false positive)."""
    labels = list(range(len(LABELS)))
    return {"accuracy": accuracy_score(gold, predicted),
            "macro_f1": f1_score(gold, predicted, labels=labels, average="macro", zero_division=0),
            "precision": precision_score(gold, predicted, labels=labels, average="macro", zero_division=0),
            "recall": recall_score(gold, predicted, labels=labels, average="macro", zero_division=0),
            "mcc": matthews_corrcoef(gold, predicted),
            **{f"f1_per_class/{name}": v for name, v in zip(LABELS, f1_score(gold, predicted, labels=labels, average=None,
                                                                              zero_division=0), strict=True)}}


def test_likelihood_metrics_equal_sklearn_on_the_predictions(tiny_llama: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Over several batches; the scores are random, so that every label is predicted and some wrongly."""
    _, datamodule, module = setup_parts(tmp_path, tiny_llama, "decoder", "task.data.eval_batch_size=4", "task.data.val_size=24")
    generator = torch.Generator().manual_seed(0)
    scores = {}
    monkeypatch.setattr(module, "label_scores", lambda b: scores.setdefault(id(b), torch.randn(len(b["input_ids"]), 3, generator=generator)))
    monkeypatch.setattr(module, "add_samples", lambda stage, rows: None)  # samples are kept in a trainer's test only
    metrics = module.build_metrics()
    gold, predicted = [], []
    for batch in datamodule.val_dataloader():
        module.update_metrics(metrics, None, batch, "val")
        gold += batch[META][GOLD]
        predicted += scores[id(batch)].argmax(-1).tolist()
    assert len(gold) == 24 and set(predicted) == {0, 1, 2} and 0 < accuracy_score(gold, predicted) < 1
    assert module.metric_values(metrics) == pytest.approx(sklearn_metrics(gold, predicted), abs=1e-6)


def test_generated_outputs_are_matched_to_labels_and_unmatched_ones_are_wrong(tiny_llama: Path, tmp_path: Path,  # noqa: F811
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, datamodule, module = setup_parts(tmp_path, tiny_llama, "decoder", "task.module.scoring=generate")
    batch = next(iter(datamodule.val_dataloader()))
    gold = batch[META][GOLD]
    variants = [" Apple ", "river", "ENGINE", "apple.", "the river", ""]  # 3 match a label (stripped, any case), 3 none
    outputs = [variants[i % len(variants)] for i in range(len(gold))]
    expected = [[0, 1, 2, -1, -1, -1][i % len(variants)] for i in range(len(gold))]
    monkeypatch.setattr(module, "generate", lambda b: (outputs, torch.ones(len(outputs))))
    monkeypatch.setattr(module, "add_samples", lambda stage, rows: None)
    metrics = module.build_metrics().clone(prefix="val/")
    module.update_metrics(metrics, None, batch, "val")
    values = module.metric_values(metrics)
    assert values.pop("val/no_match") == pytest.approx(expected.count(-1) / len(gold))
    assert values == pytest.approx({f"val/{k}": v for k, v in sklearn_metrics(gold, expected).items()}, abs=1e-6)
    table = module.predictions_table([module.predict_step(batch, 0)], list(range(len(gold))))
    assert table["prediction"] == [LABELS[i] if i >= 0 else None for i in expected] and table["output"] == outputs


def test_generate_scoring_refuses_labels_that_differ_only_in_case(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"task\.module\.scoring=generate .* differ only in case"):
        setup_parts(tmp_path, tiny_llama, "decoder", "task.module.scoring=generate", "task.data.labels=[apple,river,engine,Apple]")
    with pytest.raises(ConfigError, match=r"task\.module\.scoring must be one of \['likelihood', 'generate'\]"):
        setup_parts(tmp_path, tiny_llama, "decoder", "task.module.scoring=sample")


def test_a_tiny_decoder_learns_to_answer_with_the_label(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write(topic_frame(240), tmp_path / "rows.csv")
    out = tmp_path / "run"
    metrics = run(compose_train(out, *overrides(tiny_llama, data, "decoder", "trainer.max_epochs=12", "optimizer.lr=3e-3",
                                                "scheduler=linear", "task.data.batch_size=16")))
    assert metrics["val"]["accuracy"] > 0.8 and metrics["test"]["accuracy"] > 0.8  # chance: 1/3
    assert {"accuracy", "macro_f1", "precision", "recall", "mcc", "loss", *(f"f1_per_class/{x}" for x in LABELS)} == set(metrics["test"])
    sample = pd.read_json(out / "samples" / "test.jsonl", lines=True).iloc[0]
    assert sample["reference"] in LABELS and sample["output"] in LABELS and set(sample["scores"]) == set(LABELS)

    # tunelab-predict on a labelled file: its metrics are sklearn's on the predictions it writes
    test_file = write(topic_frame(45, seed=7), tmp_path / "new.csv")
    result = predict(out, test_file, tmp_path / "new.predictions.csv")
    predictions = pd.read_csv(result["predictions"])
    assert len(predictions) == 45 and predictions["prediction"].isin(LABELS).all()
    assert predictions["confidence"].between(1 / 3, 1).all()
    gold = [LABELS.index(x) for x in predictions["label"]]
    assert result["metrics"]["accuracy"] > 0.8
    expected = sklearn_metrics(gold, [LABELS.index(x) for x in predictions["prediction"]])
    assert {k: result["metrics"][k] for k in expected} == pytest.approx(expected, abs=1e-6)

    # an unlabelled file: the same predictions, no metrics
    unlabelled = predict(out, write(topic_frame(45, seed=7)[["text"]], tmp_path / "unlabelled.csv"))
    assert "metrics" not in unlabelled
    assert pd.read_csv(unlabelled["predictions"])["prediction"].tolist() == predictions["prediction"].tolist()

    # the exported model, evaluated by free generation
    generated = run(compose_train(tmp_path / "generate", *overrides(out / "model", data, "decoder", "train=false",
                                                                    "task.module.scoring=generate")))
    assert generated["test"]["accuracy"] > 0.8 and 0 <= generated["test"]["no_match"] < 0.2
