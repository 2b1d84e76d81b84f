"""LightningModules: ``TaskModule`` holds what all tasks share; one subclass per task family."""

from tunelab.tasks.base import TaskModule
from tunelab.tasks.classification import SequenceClassificationModule
from tunelab.tasks.generative_classification import GenerativeClassificationModule
from tunelab.tasks.lm import CausalLMModule, LanguageModelModule, MaskedLMModule
from tunelab.tasks.multiple_choice import MultipleChoiceModule
from tunelab.tasks.qa import QuestionAnsweringModule
from tunelab.tasks.regression import SequenceRegressionModule
from tunelab.tasks.seq2seq import Seq2SeqModule
from tunelab.tasks.token_classification import TokenClassificationModule

__all__ = ["CausalLMModule", "GenerativeClassificationModule", "LanguageModelModule", "MaskedLMModule", "MultipleChoiceModule", "QuestionAnsweringModule", "Seq2SeqModule", "SequenceClassificationModule", "SequenceRegressionModule", "TaskModule", "TokenClassificationModule"]
