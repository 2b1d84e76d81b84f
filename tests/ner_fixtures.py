"""A learnable toy tagging set over the tiny BERT's vocabulary (tests/conftest.py).

Fruit words form FRUIT entities and water words WATER entities, one or two words long, between filler
words; machine words are distractors tagged O. "kiwi" is not in the vocabulary: it splits into four
sub-tokens, so alignment matters.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.conftest import CLASS_WORDS, NOISE

ENTITY_WORDS = {"FRUIT": [*CLASS_WORDS["alpha"], "kiwi"], "WATER": CLASS_WORDS["beta"]}
TAGS = ["O", "B-FRUIT", "I-FRUIT", "B-WATER", "I-WATER"]


def tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    for _ in range(rng.randint(1, 3)):
        for _ in range(rng.randint(1, 3)):
            word = rng.choice([*NOISE, *CLASS_WORDS["gamma"]])
            tokens.append(word)
            tags.append("O")
        kind = rng.choice(sorted(ENTITY_WORDS))
        for i in range(rng.randint(1, 2)):
            tokens.append(rng.choice(ENTITY_WORDS[kind]))
            tags.append(f"{'B' if i == 0 else 'I'}-{kind}")
    tokens.append(rng.choice(NOISE))
    tags.append("O")
    return tokens, tags


def tagged_rows(n: int, seed: int = 0) -> list[dict[str, list[str]]]:
    rng = random.Random(seed)
    return [dict(zip(("tokens", "tags"), tagged_sentence(rng), strict=True)) for _ in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_conll(rows: list[dict], path: Path, docstart: bool = False) -> Path:
    lines = ["-DOCSTART- -X- O O", ""] if docstart else []
    for row in rows:
        lines += [f"{token}\t{tag}" if "tags" in row else token
                  for token, tag in zip(row["tokens"], row.get("tags", row["tokens"]), strict=True)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path
