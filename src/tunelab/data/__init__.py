"""Datasets to batches: loading (hub or local files), validation, tokenization, batching."""

from tunelab.data.base import TaskDataModule
from tunelab.data.classification import ClassificationDataModule, RegressionDataModule
from tunelab.data.generative_classification import GenerativeClassificationDataModule
from tunelab.data.generative_qa import GenerativeQADataModule
from tunelab.data.instruct import InstructDataModule
from tunelab.data.lm import LanguageModelingDataModule
from tunelab.data.multiple_choice import MultipleChoiceDataModule
from tunelab.data.qa import QuestionAnsweringDataModule
from tunelab.data.seq2seq import Seq2SeqDataModule
from tunelab.data.token_classification import TokenClassificationDataModule

__all__ = ["ClassificationDataModule", "GenerativeClassificationDataModule", "GenerativeQADataModule", "InstructDataModule", "LanguageModelingDataModule", "MultipleChoiceDataModule", "QuestionAnsweringDataModule", "RegressionDataModule", "Seq2SeqDataModule", "TaskDataModule", "TokenClassificationDataModule"]
