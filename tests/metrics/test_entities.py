"""Entity-level NER metrics against the ``seqeval`` package as the oracle (default and strict modes)."""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Sequence

import pytest
import torch
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB1, IOB2, IOBES, Entities

from tunelab.errors import ConfigError
from tunelab.metrics.entities import SCHEMES, EntityMetrics, entities, infer_scheme

SEQEVAL_SCHEME = {"IOB1": IOB1, "IOB2": IOB2, "BIOES": IOBES}
MODES = [("default", None), *(("strict", scheme) for scheme in SCHEMES)]
TYPES = ("PER", "LOC", "ORG")
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric EntityMetrics was called before")


def seqeval_entities(tags: Sequence[str], mode: str, scheme: str | None) -> list[tuple[str, int, int]]:
    if mode == "strict":
        return [(e.tag, e.start, e.end - 1) for e in Entities([list(tags)], SEQEVAL_SCHEME[scheme]).entities[0]]
    return get_entities(list(tags))


def seqeval_scores(gold: list[list[str]], pred: list[list[str]], mode: str, scheme: str | None) -> dict[str, float]:
    """seqeval's micro P/R/F1, accuracy and classification report rows, keyed as EntityMetrics keys them."""
    kw = {"mode": "strict", "scheme": SEQEVAL_SCHEME[scheme]} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on 0/0 ratios (set to 0) and on tags without a type
        out = {"precision": precision_score(gold, pred, **kw), "recall": recall_score(gold, pred, **kw),
               "f1": f1_score(gold, pred, **kw), "accuracy": accuracy_score(gold, pred)}
        for name, row in classification_report(gold, pred, output_dict=True, **kw).items():
            if not name.endswith(" avg"):
                out.update({f"precision/{name}": row["precision"], f"recall/{name}": row["recall"],
                            f"f1/{name}": row["f1-score"], f"support/{name}": row["support"]})
    return out


def word_rows(labels: list[str], gold: list[list[str]], pred: list[list[str]]) -> list[tuple[int, int, int, int]]:
    """(sentence id, word index, predicted id, gold id) of every word; sentence ids are not 0..n-1."""
    index = {tag: i for i, tag in enumerate(labels)}
    return [(7 * s + 3, w, index[p], index[g]) for s, (gs, ps) in enumerate(zip(gold, pred, strict=True))
            for w, (g, p) in enumerate(zip(gs, ps, strict=True))]


def feed(metric: EntityMetrics, rows: list[tuple[int, int, int, int]]) -> None:
    if rows:
        metric.update(*torch.tensor(rows, dtype=torch.long).T)


def scores(metric: EntityMetrics) -> dict[str, float]:
    values = metric.compute()
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in values.values())
    return {k: v.item() for k, v in values.items()}


def shuffled_updates(labels: list[str], gold: list[list[str]], pred: list[list[str]], mode: str,
                     scheme: str | None, rng: random.Random) -> dict[str, float]:
    """EntityMetrics fed the words in a random order, over a few updates of random sizes."""
    rows = word_rows(labels, gold, pred)
    rng.shuffle(rows)
    cuts = sorted(rng.sample(range(len(rows) + 1), k=min(3, len(rows) + 1)))
    metric = EntityMetrics(labels, mode, scheme)
    for lo, hi in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        feed(metric, rows[lo:hi])
    return scores(metric)


def assert_equals_seqeval(ours: dict[str, float], gold: list[list[str]], pred: list[list[str]], mode: str,
                          scheme: str | None) -> None:
    reference = seqeval_scores(gold, pred, mode, scheme)
    assert reference.keys() <= ours.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, rel=0, abs=1e-12), key
    for key in ours.keys() - reference.keys():  # a type of the labels that no sentence has
        assert ours[key] == 0, key


# (tags, mode, scheme, entities): each case also checked against seqeval
CRAFTED = [
    # broken I-: the type changes inside an entity
    (["B-PER", "I-LOC", "I-LOC", "O"], "default", None, [("PER", 0, 0), ("LOC", 1, 2)]),
    (["B-PER", "I-LOC", "I-LOC", "O"], "strict", "IOB2", [("PER", 0, 0)]),
    # (IOB1 strict: a B- starts an entity only right after one of its own type, so not here)
    (["B-PER", "I-LOC", "I-LOC", "O"], "strict", "IOB1", [("LOC", 1, 2)]),
    # I- after O, and at the sentence start
    (["O", "I-PER", "I-PER", "O"], "default", None, [("PER", 1, 2)]),
    (["I-PER", "O", "I-PER"], "strict", "IOB2", []),
    (["I-PER", "O", "I-PER"], "strict", "IOB1", [("PER", 0, 0), ("PER", 2, 2)]),
    # I- of another type right after an entity
    (["I-PER", "I-LOC"], "default", None, [("PER", 0, 0), ("LOC", 1, 1)]),
    (["B-PER", "I-PER", "I-ORG", "I-ORG"], "strict", "IOB2", [("PER", 0, 1)]),
    # adjacent entities of one type: B-X B-X (IOB2), and IOB1's I-X B-X
    (["B-PER", "B-PER", "I-PER"], "default", None, [("PER", 0, 0), ("PER", 1, 2)]),
    (["B-PER", "B-PER", "I-PER"], "strict", "IOB2", [("PER", 0, 0), ("PER", 1, 2)]),
    (["I-PER", "B-PER", "I-PER"], "strict", "IOB1", [("PER", 0, 0), ("PER", 1, 2)]),
    (["I-PER", "B-PER", "I-PER"], "default", None, [("PER", 0, 0), ("PER", 1, 2)]),
    # an entity that ends the sentence
    (["O", "B-LOC", "I-LOC"], "default", None, [("LOC", 1, 2)]),
    (["O", "B-LOC", "I-LOC"], "strict", "IOB2", [("LOC", 1, 2)]),
    (["O", "B-LOC"], "strict", "BIOES", []),
    # BIOES: complete entities, E- without B-, B- without E-, runs of S-
    (["B-PER", "I-PER", "E-PER", "S-LOC", "O"], "strict", "BIOES", [("PER", 0, 2), ("LOC", 3, 3)]),
    (["O", "E-PER", "I-PER", "E-PER"], "default", None, [("PER", 1, 1), ("PER", 2, 3)]),
    (["O", "E-PER", "I-PER", "E-PER"], "strict", "BIOES", []),
    (["B-PER", "I-PER", "O"], "default", None, [("PER", 0, 1)]),
    (["B-PER", "I-PER", "O"], "strict", "BIOES", []),
    (["S-PER", "S-PER", "S-LOC"], "default", None, [("PER", 0, 0), ("PER", 1, 1), ("LOC", 2, 2)]),
    (["S-PER", "S-PER", "S-LOC"], "strict", "BIOES", [("PER", 0, 0), ("PER", 1, 1), ("LOC", 2, 2)]),
    (["B-PER", "S-PER", "E-PER"], "default", None, [("PER", 0, 0), ("PER", 1, 1), ("PER", 2, 2)]),
    # tags without a type have type "_"
    (["B", "I", "O", "I"], "default", None, [("_", 0, 1), ("_", 3, 3)]),
    (["B", "I", "O", "I"], "strict", "IOB2", [("_", 0, 1)]),
    (["S", "B", "E"], "strict", "BIOES", [("_", 0, 0), ("_", 1, 2)]),
    # a type containing "-"
    (["B-geo-loc", "I-geo-loc"], "default", None, [("geo-loc", 0, 1)]),
    # the modes read a type differently: default keeps a trailing "-", strict strips it
    (["B-PER-", "I-PER"], "default", None, [("PER-", 0, 0), ("PER", 1, 1)]),
    (["B-PER-", "I-PER"], "strict", "IOB2", [("PER", 0, 1)]),
    ([], "default", None, []),
]


@pytest.mark.parametrize("tags,mode,scheme,expected", CRAFTED)
def test_crafted_sequences_give_seqeval_entities(tags: list[str], mode: str, scheme: str | None,
                                                 expected: list[tuple[str, int, int]]) -> None:
    assert entities(tags, mode, scheme) == expected == seqeval_entities(tags, mode, scheme)


def test_crafted_corpus_scores_equal_seqeval_in_every_mode() -> None:
    gold = [tags for tags, *_ in CRAFTED if tags]
    rng = random.Random(5)
    for mode, scheme in MODES:
        allowed = "BIOES" if scheme in (None, "BIOES") else "BIO"
        sentences = [tags for tags in gold if all(t[0] in allowed for t in tags)]
        # predictions: each sentence's gold with one tag replaced by the tag of another position
        pred = [tags[:] for tags in sentences]
        for tags in pred:
            tags[rng.randrange(len(tags))] = rng.choice(tags)
        labels = ["O", "B-MISC", *sorted({t for tags in sentences for t in tags} - {"O"})]
        metric = EntityMetrics(labels, mode, scheme)
        feed(metric, word_rows(labels, sentences, pred))
        ours = scores(metric)
        assert ours["support/MISC"] == 0 and ours["f1/MISC"] == 0  # a type of the labels that never occurs
        assert_equals_seqeval(ours, sentences, pred, mode, scheme)


def test_per_type_scores_and_accuracy_hand_values() -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "I-LOC"]]
    metric = EntityMetrics(labels)
    feed(metric, word_rows(labels, gold, pred))
    ours = scores(metric)
    # predicted PER(0-1) PER(3) LOC(0-1); gold PER(0-1) LOC(3) LOC(0): one right of 3 predicted, 3 gold
    assert ours["precision"] == pytest.approx(1 / 3) and ours["recall"] == pytest.approx(1 / 3)
    assert ours["precision/PER"] == 0.5 and ours["recall/PER"] == 1.0 and ours["support/PER"] == 1
    assert ours["f1/LOC"] == 0.0 and ours["support/LOC"] == 2
    assert ours["accuracy"] == pytest.approx(4 / 6)
    assert_equals_seqeval(ours, gold, pred, "default", None)


def test_order_and_splitting_of_updates_do_not_change_scores() -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "O"], ["O", "B-LOC"]]
    rows = word_rows(labels, gold, pred)
    ordered = EntityMetrics(labels)
    feed(ordered, rows)
    # the first sentence cut into two windows that arrive in separate updates, the later window first
    split = EntityMetrics(labels)
    feed(split, rows[3:6] + rows[6:])
    feed(split, rows[:3][::-1])
    assert scores(split) == scores(ordered)
    assert scores(ordered)["precision"] == pytest.approx(2 / 3)
    assert_equals_seqeval(scores(split), gold, pred, "default", None)


@pytest.mark.parametrize("mode,scheme", MODES)
def test_random_sequences_equal_seqeval(mode: str, scheme: str | None) -> None:
    rng = random.Random(sum(map(ord, f"{mode}{scheme}")))
    for tag_scheme in [scheme] if scheme else SCHEMES:  # default mode: tags of every scheme
        prefixes = "BIES" if tag_scheme == "BIOES" else "BI"
        labels = ["O", *(f"{p}-{t}" for t in TYPES for p in prefixes)]
        gold = [rng.choices(labels, k=rng.randint(0, 9)) for _ in range(200)]
        pred = [[g if rng.random() < 0.7 else rng.choice(labels) for g in tags] for tags in gold]
        ours = shuffled_updates(labels, gold, pred, mode, scheme, rng)
        assert ours["f1"] > 0
        assert_equals_seqeval(ours, gold, pred, mode, scheme)
        for tags in gold[:50]:
            assert entities(tags, mode, scheme) == seqeval_entities(tags, mode, scheme)


def test_merged_rank_states_equal_one_metric_over_all_words() -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    rng = random.Random(3)
    gold = [rng.choices(labels, k=rng.randint(1, 8)) for _ in range(40)]
    pred = [[g if rng.random() < 0.6 else rng.choice(labels) for g in tags] for tags in gold]
    rows = word_rows(labels, gold, pred)
    rng.shuffle(rows)  # sentences land on both "ranks"
    whole, rank0, rank1 = (EntityMetrics(labels) for _ in range(3))
    feed(whole, rows)
    feed(rank0, rows[: len(rows) // 2])
    feed(rank1, rows[len(rows) // 2 :])
    rank0.merge_state(rank1)
    assert scores(rank0) == scores(whole)
    assert_equals_seqeval(scores(whole), gold, pred, "default", None)


def test_a_rank_without_words_gathers_the_dtype_the_others_gather() -> None:
    """torchmetrics stands in an empty tensor of the metric's dtype for a rank that saw no words; every rank
    must all_gather one dtype (long states would meet that float32 stand-in)."""
    gathered: list[torch.dtype] = []

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        gathered.append(tensor.dtype)
        return [tensor]

    empty, busy = EntityMetrics(["O", "B-PER"]), EntityMetrics(["O", "B-PER"])
    feed(busy, [(0, 0, 1, 1)])
    for metric in (empty, busy):
        metric._sync_dist(gather)
    assert len(gathered) == 8 and set(gathered) == {torch.float64}
    assert scores(busy)["f1"] == 1.0 and scores(empty)["f1"] == 0.0


def test_no_updates_give_zeros() -> None:
    ours = scores(EntityMetrics(["O", "B-PER", "I-PER"], "strict", "IOB2"))
    assert ours == {k: 0.0 for k in ("precision", "recall", "f1", "accuracy", "precision/PER", "recall/PER",
                                     "f1/PER", "support/PER")}


def test_a_word_scored_twice_is_an_error() -> None:
    metric = EntityMetrics(["O", "B-PER"])
    feed(metric, [(3, 0, 0, 0), (3, 1, 1, 1)])
    feed(metric, [(3, 1, 1, 1)])  # overlapping windows both scored word 1 of sentence 3
    with pytest.raises(RuntimeError, match="word 1 of sentence 3 was scored twice"):
        metric.compute()


def test_an_ignored_position_left_in_is_an_error() -> None:
    metric = EntityMetrics(["O", "B-PER"])
    feed(metric, [(0, 0, 1, -100)])
    with pytest.raises(RuntimeError, match="tag id -100 is not one of the 2 labels"):
        metric.compute()


def test_config_errors_name_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"task\.module\.entity_mode=strict .* set task\.data\.tag_scheme"):
        EntityMetrics(["O", "B-PER"], mode="strict")
    with pytest.raises(ConfigError, match=re.escape("task.data.tag_scheme='IOE2'")):
        EntityMetrics(["O", "B-PER"], scheme="IOE2")
    with pytest.raises(ConfigError, match=re.escape("task.module.entity_mode='lenient'")):
        entities(["O"], mode="lenient")
    with pytest.raises(ConfigError, match="tag 'PER' in the labels is not an entity tag"):
        EntityMetrics(["O", "PER"])  # IO tags: seqeval would read prefix "P", type "ER"
    with pytest.raises(ConfigError, match=r"tag 'S-PER' .* task\.data\.tag_scheme=IOB2"):
        EntityMetrics(["O", "B-PER", "S-PER"], mode="strict", scheme="IOB2")
    with pytest.raises(ValueError, match="'E-PER' is not allowed"):
        entities(["B-PER", "E-PER"], mode="strict", scheme="IOB1")  # seqeval raises too


@pytest.mark.parametrize("sequences,expected", [
    ([["B-PER", "I-PER", "O"], ["B-LOC", "B-LOC", "I-LOC"]], "IOB2"),
    ([["O", "I-PER", "I-PER"]], "IOB1"),  # I- after O
    ([["I-PER", "O"]], "IOB1"),  # I- at the start
    ([["B-PER", "I-LOC"]], "IOB1"),  # I- after another type
    ([["I-PER", "B-PER"], ["O", "B-LOC", "E-LOC"]], "BIOES"),  # any E-/S- tag wins, wherever it comes
    ([["S-PER", "O"]], "BIOES"),
    ([], "IOB2"),
])
def test_infer_scheme(sequences: list[list[str]], expected: str) -> None:
    assert infer_scheme(iter(sequences)) == expected
