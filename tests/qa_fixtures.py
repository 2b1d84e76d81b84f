"""Extractive QA test material: a toy SQuAD-layout set whose answer is always a named span, and a
tiny 2-layer BERT with a QA head and a WordPiece tokenizer that knows every toy word."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForQuestionAnswering, PreTrainedTokenizerFast

COUNTRIES = ["norland", "estavia", "morovia", "kelvar", "dunmark", "valoria", "tarsis", "omberg", "zentia", "brevia",
             "luxara", "pelmont"]
CITIES = ["new york", "rome", "oslo", "lima", "san jose", "cairo", "kyoto", "port louis", "quito", "riga", "bern",
          "hanoi", "accra", "dakar", "minsk", "sofia"]
FILLER = ["the", "a", "of", "is", "capital", "what", "people", "in", "like", "music", "river", "near", "big", "city",
          "sea", "famous", "for", "its", "food", "and", "old", "bridge", "travel", "to", "often"]
DISTRACTORS = ["{city} is a big city near the sea .", "people in {city} like music .",
               "{city} is famous for its food .", "the old bridge of {city} is famous .",
               "people often travel to {city} ."]


def capital_example(rng: random.Random, n_distractors: int = 3, with_answer: bool = True) -> dict:
    """"the capital of X is Y ." among sentences naming other cities; the question asks for X's
    capital (answer Y), or, without an answer, for a country the context does not mention."""
    country, other = rng.sample(COUNTRIES, 2)
    city, *others = rng.sample(CITIES, 1 + n_distractors)
    sentences = [rng.choice(DISTRACTORS).format(city=c) for c in others]
    position = rng.randint(0, len(sentences))
    sentences.insert(position, f"the capital of {country} is {city} .")
    context = " ".join(sentences)
    start = context.index(f"the capital of {country} is ") + len(f"the capital of {country} is ")
    if not with_answer:
        return {"question": f"what is the capital of {other} ?", "context": context,
                "answers": {"text": [], "answer_start": []}}
    return {"question": f"what is the capital of {country} ?", "context": context,
            "answers": {"text": [city], "answer_start": [start]}}


def capital_rows(n: int, seed: int = 0, no_answer_every: int = 0, n_distractors: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [capital_example(rng, n_distractors, with_answer=not (no_answer_every and i % no_answer_every == 0))
            | {"id": f"q{i}"} for i in range(n)]


def write_rows(rows: list[dict], path: Path) -> Path:
    """jsonl (answers as a struct) or csv (answers as a JSON string), by the file's extension."""
    if path.suffix == ".csv":
        pd.DataFrame([{**r, "answers": json.dumps(r["answers"])} for r in rows]).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_qa_tokenizer(path: Path | None = None) -> PreTrainedTokenizerFast:
    words = [*FILLER, *COUNTRIES, *(w for c in CITIES for w in c.split()), "?", ".", ","]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(dict.fromkeys(vocab))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128, model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if path is not None:
        fast.save_pretrained(path)
    return fast


def build_tiny_qa_bert(path: Path) -> Path:
    """A 2-layer BERT (hidden 32) with a QA head, saved like a Hub checkpoint."""
    tokenizer = build_qa_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2)
    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(path)
    return path


def qa_overrides(model: Path, train: Path, *extra: str, task: str = "qa-json") -> list[str]:
    """A fast run of the tiny QA BERT on a local file."""
    return [
        f"task={task}", f"task.data.source.data_files.train={train}", f"model.name_or_path={model}",
        "model.name=tiny-qa", "progress=none", "logger=csv", "optimizer.lr=3e-3", "task.data.batch_size=16",
        "task.data.max_length=64", "task.data.stride=16", "trainer.log_every_n_steps=1",
        "callbacks.early_stopping=null", "trainer.num_sanity_val_steps=0", *extra,
    ]
