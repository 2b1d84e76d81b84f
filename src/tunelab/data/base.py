"""The datamodule base shared by every task family.

load source -> pick splits -> normalise + missing values (``tunelab.data.quality``) -> validate + encode
(family) -> carve missing splits -> duplicates, overlap, class counts (``tunelab.data.quality``) -> few-shot /
train fraction (``tunelab.data.subsets``) -> subsample -> augmented copies of train (``tunelab.data.augment``)
-> tokenize (cached by ``datasets.map``) -> dataloaders with dynamic padding.
Families subclass it and implement ``validate`` and ``tokenize``, with the checks of
``tunelab.data.checks``; their messages name rows with ``rows`` (as numbered in the user's file).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch.utils.data import DataLoader, DistributedSampler
from transformers import PreTrainedTokenizerBase

from tunelab.data import token_budget
from tunelab.data.augment import Augmentation, AugmentConfig
from tunelab.data.checks import ROW, RowNumbering, check_empty_text_policy, describe_rows, number_rows
from tunelab.data.quality import Fields, QualityConfig, QualityReport, SplitView
from tunelab.data.sampling import (
    DistributedEvalSampler,
    DistributedLengthGroupedSampler,
    EpochLengthGroupedSampler,
    sorted_by_length,
)
from tunelab.data.sources import Source, load
from tunelab.data.subsets import Subsets
from tunelab.errors import ConfigError, DataError, unwrap

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
GROUP = "__tunelab_group__"  # carving: a row's exact-duplicate group


@dataclass(frozen=True)
class Column:
    """A column a task family reads, named by the ``task.data.<key>`` config key.

    ``target``: it holds the references (labels, answers, targets): a file to predict may lack it,
    and metrics are computed when it is there. ``tunelab-predict`` offers ``--<key>`` for each.
    """

    key: str
    help: str
    target: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


class ResumableDataLoader(DataLoader):
    """A training DataLoader that Lightning can resume mid-epoch (it is ``_Stateful``).

    Its state is the number of batches of the current epoch that training completed, read from the
    trainer's loop by ``completed_batches`` when a checkpoint is saved (also the one Slurm's requeue
    signal triggers); after ``load_state_dict`` the next epoch's iteration skips that many batches, so a
    resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, *args: Any, completed_batches: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.completed_batches = completed_batches
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        return {"completed_batches": self.completed_batches() if self.completed_batches else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        completed = int(state.get("completed_batches", 0))
        self._skip = completed if completed < len(self) else 0  # a finished epoch: start the next one

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        batches = super().__iter__()
        return itertools.islice(batches, skip, None) if skip else batches


def export_labels(export: Mapping[str, Any]) -> list[str] | None:
    """The label names of an exported model (its ``tunelab.json``), in id order; None without ``id2label``."""
    id2label = export["config_kwargs"].get("id2label")
    return [id2label[i] for i in range(len(id2label))] if id2label else None


class TaskDataModule(L.LightningDataModule):
    """Loads, validates and tokenizes a dataset; serves dynamically padded batches.

    Args:
        tokenizer: the model's tokenizer.
        source: a loader config (``_target_`` in ``tunelab.data.sources``) or a loaded ``Source``.
        splits: our split name -> the source's split name; splits left out are carved from train.
            Further test sets are named ``test_<name>`` (e.g. MNLI's ``test_mismatched``).
        val_size, test_size: what to carve from train when a split is missing (fraction or count).
        data_seed: seed of carving and subsampling (fixed across training seeds).
        max_samples: optional cap per split, e.g. ``{train: 6000}``.
        batch_size, eval_batch_size: examples per batch.
        max_length: truncation length in tokens.
        group_by_length: batch training examples of similar length together (less padding).
        max_tokens: training batches of as many examples as fit this many fed tokens instead of
            ``batch_size`` examples (``tunelab.data.token_budget``); None: ``batch_size``.
        num_workers: DataLoader worker processes.
        pad_to_multiple_of: pad batch lengths to a multiple of this (tensor-core friendly on GPU).
        empty_text: rows whose text (any text column of the family) is blank: ``drop`` them with a
            warning naming them, or stop with an ``error`` naming them.
        quality: the data-quality checks and normalisation (``tunelab.data.quality.QualityConfig``).
        few_shot: ``{k, seed, validation}``: k training examples per class (``tunelab.data.subsets``).
        train_fraction: a seeded share of the training rows (``tunelab.data.subsets``).
        augment: augmented copies of the training rows (``tunelab.data.augment.AugmentConfig``); families
            whose ``augment_unsupported`` says why refuse it.
        seed: the run's seed, for the training order (and the augmentation's, unless ``augment.seed`` is set).
    """

    stratify_column: str | None = None
    #: The columns the family reads (its ``task.data.*_column`` keys), described once.
    columns: tuple[Column, ...] = ()
    #: What ``tunelab-predict`` writes by default (``.csv``, or ``.jsonl`` for lists such as tags).
    prediction_suffix: str = ".csv"
    #: Why ``task.data.augment`` cannot edit this family's rows; None: it augments the text fields (``quality_fields``).
    augment_unsupported: str | None = "this task family has no augmentation"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        source: Mapping[str, Any] | Source,
        splits: Mapping[str, str] | None = None,
        val_size: float | int = 0.1,
        test_size: float | int = 0.1,
        data_seed: int = 1234,
        max_samples: Mapping[str, int | None] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        max_length: int = 128,
        group_by_length: bool = True,
        max_tokens: int | None = None,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        empty_text: Literal["drop", "error"] = "drop",
        quality: Mapping[str, Any] | None = None,
        few_shot: Mapping[str, Any] | None = None,
        train_fraction: float | None = None,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        check_empty_text_policy(empty_text)
        self.empty_text = empty_text
        self.tokenizer = tokenizer
        self.source_cfg = source
        self.split_names = dict(splits) if splits else None
        self.val_size = val_size
        self.test_size = test_size
        self.data_seed = data_seed
        self.max_samples = dict(max_samples or {})
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_length = max_length
        self.group_by_length = group_by_length
        self.max_tokens = max_tokens
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.examples: dict[str, datasets.Dataset] | None = None  # validated, untokenized
        self.features: dict[str, datasets.Dataset] = {}  # tokenized
        self.lengths: dict[str, list[int]] = {}
        self.origin: dict[str, str] = {}
        self.numbering: dict[str, RowNumbering] = defaultdict(RowNumbering)  # per split: how messages number rows
        self.data_report = QualityReport(QualityConfig.parse(quality))  # its counts go to metrics.json
        self.subsets = Subsets.parse(few_shot, train_fraction)
        capped = [s for s in ("train", *(["validation"] if self.subsets.validation == "kshot" else []))
                  if self.max_samples.get(s) is not None]
        if self.subsets.k is not None and capped:
            raise ConfigError(f"task.data.few_shot.k draws the {' and '.join(capped)} rows itself, and task.data.max_samples "
                              f"caps them at random afterwards (losing the k per class): set "
                              f"{', '.join(f'task.data.max_samples.{s}' for s in capped)} to null")
        self.carved: dict[str, str] = {}  # the splits held out from train -> how (tunelab.data.quality.CARVING)
        self.augmentation = Augmentation(AugmentConfig.parse(augment), seed)  # its counts go to metrics.json too
        if self.augmentation.config.active and self.augment_unsupported:
            raise ConfigError(f"{self.augmentation.config.describe()}: {type(self).__name__} does not augment its "
                              f"training rows: {self.augment_unsupported}. Set task.data.augment.copies=0 and "
                              f"task.data.augment.backtranslate=null")
        self.seed = seed

    # --- hooks for task families ---------------------------------------------------------------
    def validate(self, ds: datasets.Dataset, split: str, where: str) -> datasets.Dataset:
        """Check columns and values of one split, encode labels; raise DataError naming ``where``."""
        raise NotImplementedError

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """Batched ``datasets.map`` function: examples -> model inputs."""
        raise NotImplementedError

    def before_featurize(self, splits: Mapping[str, datasets.Dataset]) -> None:
        """Hook: called once with every split validated and carved (rows numbered in ``ROW``), before any is
        tokenized (few-shot prompts draw their examples from train here)."""

    def collate_fn(self) -> Callable:
        raise NotImplementedError

    def featurize(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        """Examples -> model features (cached by ``datasets.map``); families that regroup rows
        (language modelling blocks, QA windows) override this or ``tokenize``. ``ds`` still has the
        hidden ``ROW`` column, for messages (``self.numbering[split].describe(batch[ROW][j:j+1])``)."""
        return ds.map(self.tokenize, batched=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")

    def feature_length(self, input_ids: list) -> int:
        """A feature's length in tokens, for length grouping and the eval order (multiple choice: its longest choice)."""
        return len(input_ids)

    @property
    def has_targets(self) -> bool:
        """Whether the data carries references (labels, answers, targets), so metrics can be computed."""
        return True

    @classmethod
    def prediction_kwargs(cls, data_cfg: Mapping[str, Any], columns: list[str], export: Mapping[str, Any]) -> dict[str, Any]:
        """Datamodule arguments to score a new file with ``columns`` using an exported model
        (``export`` is its ``tunelab.json``): a ``target`` column the file lacks is left out (no metrics)."""
        return {c.key: None for c in cls.columns if c.target and data_cfg.get(c.key) and data_cfg[c.key] not in columns}

    @classmethod
    def prediction_source(cls, data_file: str, data_cfg: Mapping[str, Any], encoding: str) -> Source:
        """The file ``tunelab-predict`` scores, as a one-split (``test``) source."""
        return load(path="", data_files={"test": str(data_file)}, encoding=encoding)

    def module_kwargs(self) -> dict[str, Any]:
        """What the task module needs to know about the data (e.g. the label names)."""
        return {}

    def quality_fields(self) -> Fields:
        """The columns ``task.data.quality`` checks: those of ``columns`` (each key's attribute: a column name or
        a list of them; ClassificationDataModule keeps its text and pair in ``text_columns``), targets apart."""
        text: list[str] = []
        target: list[str] = []
        for column in self.columns:
            names = getattr(self, column.key, None)
            if names is None and not column.target and not hasattr(self, column.key):
                names = getattr(self, "text_columns", None)
            names = [names] if isinstance(names, str) else list(names or ())
            (target if column.target else text).extend(names)
        return Fields(tuple(dict.fromkeys(text)), tuple(dict.fromkeys(target)))

    def rows(self, ds: datasets.Dataset, split: str, positions: Sequence[int]) -> str:
        """The rows at ``positions`` of ``ds`` (a split being validated) as numbered in the user's
        file, e.g. ``data rows 4, 9 (file lines 5, 10)`` (see ``tunelab.data.checks``)."""
        return describe_rows(ds, positions, self.numbering[split])

    # --- loading --------------------------------------------------------------------------------
    def load_source(self) -> Source:
        if isinstance(self.source_cfg, Source):
            return self.source_cfg
        try:
            return instantiate(self.source_cfg)
        except InstantiationException as err:
            raise unwrap(err) from err

    def prepare_data(self) -> None:
        self.load_source()  # downloads / builds the cache once per node

    def _pick_splits(self, source: Source, need_train: bool) -> dict[str, datasets.Dataset]:
        names = self.split_names or {s: s for s in SPLITS if s in source.splits}
        picked = {}
        for ours, theirs in sorted(names.items(), key=lambda kv: SPLITS.index(kv[0]) if kv[0] in SPLITS else len(SPLITS)):
            if ours not in SPLITS and not ours.startswith("test_"):
                raise ConfigError(f"task.data.splits: unknown split '{ours}', use {list(SPLITS)} or test_<name>")
            if theirs not in source.splits:
                raise DataError(
                    f"split '{theirs}' (task.data.splits.{ours}) not found; the source has {list(source.splits)}"
                )
            picked[ours] = source.splits[theirs]
            self.origin[ours] = source.describe(theirs)
            self.numbering[ours] = source.rows(theirs)
        if need_train and "train" not in picked:
            raise DataError(f"no training split: the source has {list(source.splits)}; set task.data.splits.train")
        return picked

    def _carve_sizes(self, splits: dict[str, datasets.Dataset]) -> dict[str, int]:
        """Rows to hold out from train per missing split; a DataError when train cannot spare them."""
        total = len(splits["train"])  # fractions are of the original train split
        sizes = {split: size if isinstance(size, int) else max(1, round(size * total))
                 for split, size in (("test", self.test_size), ("validation", self.val_size)) if split not in splits}
        if sizes and total < sum(sizes.values()) + 1:
            held = " and ".join(f"{n} {split} (task.data.{'val' if split == 'validation' else 'test'}_size)"
                                for split, n in sizes.items())
            raise DataError(
                f"split 'train' has {total} usable rows ({self.origin['train']}): too few to hold out {held} rows "
                f"and keep some to train on; it needs at least {sum(sizes.values()) + 1} rows. Give the "
                f"{' and '.join(sizes)} split explicitly (task.data.source.data_files.<split> or task.data.splits) "
                f"or lower the sizes"
            )
        return sizes

    def _carve(self, splits: dict[str, datasets.Dataset], fields: Fields) -> None:
        for split, size in self._carve_sizes(splits).items():
            train = splits["train"]
            stratify = self.stratify_column
            if stratify and not isinstance(train.features.get(stratify), datasets.ClassLabel):
                stratify = None
            # exact duplicates (task.data.quality.duplicates) stay together: carving holds out whole groups
            groups = self.data_report.group_ids(train, fields)
            how = "rows" if self.data_report.config.duplicates == "off" else "grouped"
            if groups is not None and len(set(groups)) <= size:
                log.warning("train has %d distinct rows, too few to hold out %d whole groups of duplicates for '%s': "
                            "carving rows, so copies may land on both sides", len(set(groups)), size, split)
                groups, how = None, "too few groups"
            pool = train if groups is None else self._group_representatives(train, groups)
            rows = size
            if groups is not None:  # the same share of the groups as of the rows (no duplicates: the same count)
                size = max(1, round(size * len(pool) / len(train)))
            try:
                parts = pool.train_test_split(test_size=size, seed=self.data_seed, stratify_by_column=stratify)
            except ValueError as err:  # e.g. too few examples of a class to stratify
                log.warning("stratified split failed (%s); splitting at random", err)
                parts = pool.train_test_split(test_size=size, seed=self.data_seed)
            if groups is not None:
                held = set(parts["test"][GROUP])
                parts = {name: train.select([i for i, g in enumerate(groups) if (g in held) == (name == "test")])
                         for name in ("train", "test")}
            if groups is not None and abs(len(parts["test"]) - rows) > max(5, 0.2 * rows):
                log.warning("'%s' holds %d rows where %d were asked for: carving holds out whole groups of exact "
                            "duplicates, and large groups landed there (task.data.quality.duplicates=off carves rows)",
                            split, len(parts["test"]), rows)
            splits["train"], splits[split] = parts["train"], parts["test"]
            self.carved[split] = how
            self.origin[split] = f"{self.origin['train']} (held out from train: {len(parts['test'])} rows)"
            self.numbering[split] = self.numbering["train"]  # its rows keep their ids in the train file

    @staticmethod
    def _group_representatives(train: datasets.Dataset, groups: list[int]) -> datasets.Dataset:
        """The first row of each group, with its group id in ``GROUP``."""
        first: dict[int, int] = {}
        for i, g in enumerate(groups):
            first.setdefault(g, i)
        return train.select(list(first.values())).add_column(GROUP, list(first))

    def _subsample(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        n = self.max_samples.get(split)
        if n is None or n >= len(ds):
            return ds
        return ds.shuffle(seed=self.data_seed).select(range(n))

    def setup(self, stage: str | None = None) -> None:
        """Everything up to tokenized splits, once. Stages other than ``fit`` need no train split."""
        if self.examples is not None:
            return
        need_train = stage in (None, "fit")
        checks = stage != "predict"  # a file to predict is normalised as the training data was, not checked
        splits = self._pick_splits(self.load_source(), need_train)
        fields = self.quality_fields()
        for split, ds in splits.items():
            if len(ds) == 0:
                raise DataError(f"split '{split}' is empty (0 rows): {self.origin[split]}")
            ds = self.data_report.normalise(number_rows(ds), split, fields)
            if checks:
                ds = self.data_report.check_missing(SplitView(split, ds, self.origin[split], self.numbering[split]), fields)
            splits[split] = self.validate(ds, split, self.origin[split])
            if len(splits[split]) == 0:
                raise DataError(f"split '{split}' has no usable rows left after validation: {self.origin[split]}")
        if need_train:
            self._carve(splits, fields)
        if checks:
            views = {s: SplitView(s, ds, self.origin[s], self.numbering[s], self.carved.get(s)) for s, ds in splits.items()}
            splits.update(self.data_report.check_splits(views, fields))
            for split, ds in splits.items():
                if len(ds) == 0:
                    raise DataError(f"split '{split}' has no rows left after task.data.quality dropped some: "
                                    f"{self.origin[split]}")
            self.data_report.class_counts(splits, self.stratify_column)
        if need_train:
            splits = self.subsets.draw(splits, self.stratify_column, self.data_seed)
        self.before_featurize(splits)
        self.examples = {}
        for split, ds in splits.items():
            ds = self._subsample(ds, split)
            if split == "train" and self.augmentation.config.active:
                ds = self._augment(ds)
            self.features[split] = self.featurize(ds, split)
            self.lengths[split] = [self.feature_length(ids) for ids in self.features[split]["input_ids"]]
            self.examples[split] = ds.remove_columns(ROW)
        log.info("data: %s", ", ".join(f"{s} {len(d)}" for s, d in self.examples.items()))

    def _augment(self, train: datasets.Dataset) -> datasets.Dataset:
        """The training rows followed by their augmented copies (``task.data.augment``), counted in ``data_report``."""
        columns = [c for c in self.quality_fields().text if c in train.column_names
                   and isinstance(train.features[c], datasets.Value) and train.features[c].dtype in ("string", "large_string")]
        out = self.augmentation.apply(train, columns, self.tokenizer, self.numbering["train"])
        self.data_report.counts["train"].update(self.augmentation.counts)
        return out

    # --- batches --------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int | None, sampler: Any, cls: type[DataLoader] = DataLoader,
                **kwargs: Any) -> DataLoader:
        if batch_size is None:  # sampler yields whole batches
            kwargs["batch_sampler"], sampler, batch_size = sampler, None, 1
        return cls(
            self.features[split],
            batch_size=batch_size,
            sampler=sampler,
            shuffle=None if sampler is not None or "batch_sampler" in kwargs else split == "train",
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def _ranks(self) -> tuple[int, int]:
        """(world size, global rank) of the trainer this datamodule serves; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _completed_batches(self) -> int:
        # Batches of this epoch whose training step is done: ``processed`` (``completed`` lags by one in
        # ``on_train_batch_end``, where ModelCheckpoint(every_n_train_steps) saves; equal elsewhere).
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def batch_cost(self) -> token_budget.Cost:
        """Fed tokens of a training batch, which ``max_tokens`` bounds (multiple choice: x its choices;
        packing: real tokens only)."""
        return token_budget.padded_cost(self.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        completed = self._completed_batches if getattr(self, "trainer", None) is not None else None
        if self.max_tokens is not None:
            batches = token_budget.TokenBudgetBatchSampler(self.lengths["train"], self.max_tokens, self.batch_cost(),
                                                           seed=self.seed, num_replicas=world, rank=rank)
            return self._loader("train", None, batches, ResumableDataLoader, completed_batches=completed)
        sampler = None
        if self.group_by_length and world > 1:
            sampler = DistributedLengthGroupedSampler(self.batch_size, self.lengths["train"], world, rank, seed=self.seed)
        elif self.group_by_length:
            sampler = EpochLengthGroupedSampler(self.batch_size, self.lengths["train"], seed=self.seed)
        else:  # a shuffle reproducible per (seed, epoch), so a mid-epoch resume skips the right batches
            sampler = DistributedSampler(range(len(self.features["train"])), num_replicas=world, rank=rank,
                                         shuffle=True, seed=self.seed)
        return self._loader("train", self.batch_size, sampler, ResumableDataLoader, completed_batches=completed)

    def eval_order(self, split: str) -> list[int]:
        """Row order of the eval loaders (longest first), to map predictions back to rows."""
        return sorted_by_length(self.lengths[split])

    def _eval_loader(self, split: str) -> DataLoader:
        """Longest first; across ranks, each example exactly once (no padding), so metrics synced
        across ranks equal those of one process."""
        world, rank = self._ranks()
        order: Any = self.eval_order(split)
        if world > 1:
            order = DistributedEvalSampler(order, world, rank)
        return self._loader(split, self.eval_batch_size, order)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    @property
    def test_splits(self) -> list[str]:
        """``test`` and any further ``test_<name>`` sets, in the order of ``test_dataloader``."""
        return sorted((s for s in self.features if s == "test" or s.startswith("test_")), key=lambda s: s != "test")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._eval_loader(s) for s in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, self.eval_order("test"))


def families() -> list[type[TaskDataModule]]:
    """Every task family's datamodule class (those ``tunelab.data`` imports), base classes first."""
    import tunelab.data  # noqa: F401  (imports every family)

    found, todo = [], list(TaskDataModule.__subclasses__())
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found

