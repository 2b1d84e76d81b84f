"""A learnable toy multiple-choice set over the tiny BERT's vocabulary (tests/conftest.py).

The context names three words of one topic (fruit, water or machines) among filler words; the correct
ending repeats one of them, each wrong ending brings a word of another topic. (Exact word matching
alone, with distractors of the same topic, is beyond a 2-layer BERT with hidden size 32 in a few
epochs; matching the topic is learnt in seconds.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import CLASS_WORDS, NOISE

NUM_CHOICES = 4


def toy_row(rng: random.Random, num_choices: int = NUM_CHOICES) -> dict:
    """``{"context", "choices", "label"}``: the ``label``-th choice repeats a word of the context."""
    topic = rng.choice(sorted(CLASS_WORDS))
    named = rng.sample(CLASS_WORDS[topic], 3)
    context = named + [rng.choice(NOISE) for _ in range(rng.randint(0, 2))]
    rng.shuffle(context)
    others = [w for t, words in sorted(CLASS_WORDS.items()) if t != topic for w in words]
    endings = [[word, rng.choice(NOISE)] for word in [rng.choice(named), *rng.sample(others, num_choices - 1)]]
    for ending in endings:
        rng.shuffle(ending)
    label = rng.randrange(num_choices)
    endings.insert(label, endings.pop(0))
    return {"context": " ".join(context), "choices": [" ".join(e) for e in endings], "label": label}


def toy_rows(n: int, seed: int = 0, num_choices: int = NUM_CHOICES) -> list[dict]:
    rng = random.Random(seed)
    return [toy_row(rng, num_choices) for _ in range(n)]


def as_swag(row: dict) -> dict:
    """A toy row in SWAG's layout (allenai/swag): sent1, sent2 (put before every ending), ending0..3, label."""
    return {"sent1": row["context"], "sent2": "the", **{f"ending{i}": c for i, c in enumerate(row["choices"])},
            "label": row["label"], "video-id": "toy", "fold-ind": "0", "startphrase": row["context"],
            "gold-source": "gold"}


def as_hellaswag(row: dict) -> dict:
    """A toy row in HellaSwag's layout (Rowan/hellaswag): ctx, endings (a list), label as a string."""
    return {"ind": 0, "activity_label": "toy", "ctx_a": row["context"], "ctx_b": "", "ctx": row["context"],
            "endings": row["choices"], "source_id": "toy", "split": "train", "split_type": "indomain",
            "label": str(row["label"])}


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mc_overrides(model: Path, train: Path, *extra: str) -> list[str]:
    """A fast run of the tiny BERT on a local mc-json file."""
    return [
        "task=mc-json", f"task.data.source.data_files.train={train}", f"model.name_or_path={model}",
        "model.name=tiny-mc", "progress=none", "logger=csv", "optimizer.lr=3e-3", "scheduler=linear",
        "task.data.batch_size=16", "trainer.log_every_n_steps=1", "callbacks.early_stopping=null",
        "trainer.num_sanity_val_steps=0", *extra,
    ]
