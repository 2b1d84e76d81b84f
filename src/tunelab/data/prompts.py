"""How a decoder LLM sees a row: a prompt, then the completion it is trained to produce.

A prompt is either the task's template (``"{source}\\nHeadline:"``, fields are the row's columns and
``source``) followed by ``completion_prefix`` + the target + eos, or, with ``chat: true``, the tokenizer's
chat template around the template's text as the user turn (and the target as the assistant turn).
Prompt and completion are tokenized apart, so that generation starts from exactly the tokens the model
was trained to continue, and the loss covers the completion only.

Few-shot prompts (``shots: k``) put k solved examples before the row: rendered by the template and followed
by their completion, ``shot_separator`` between them, or, with ``chat: true``, as earlier user and assistant
turns. The datamodule draws them from the train split, or ``examples`` gives them.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from tunelab.batch import IGNORE_INDEX
from tunelab.errors import ConfigError, DataError

KEY = "task.data.prompt"
SOURCE_FIELD = "source"  # the source text, also when it comes from a {language: text} column
COMPLETION_FIELD = "completion"  # a few-shot example's answer
ROLES = ("system", "user", "assistant")
Encoded = tuple[list[int], list[int], list[int]]  # prompt ids, their labels (IGNORE_INDEX but for earlier answers), completion ids


def conversation_problem(messages: Any) -> str | None:
    """What is wrong with a chat ``messages`` list (``[{role, content}, ...]``), or None: roles are system
    (first only), then user and assistant in turn, starting with user."""
    if not isinstance(messages, list) or not messages:
        return f"messages must be a non-empty list of {{role, content}}, got {type(messages).__name__}"
    expected = "user"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            return f"message {i + 1} is not a {{role, content}} with text content"
        role = message.get("role")
        if role not in ROLES:
            return f"message {i + 1} has the unknown role {role!r} (roles: {', '.join(ROLES)})"
        if role == "system" and i == 0:
            continue
        if role != expected:
            return f"message {i + 1} is a {role} turn where a {expected} turn was expected (system first, then user and assistant in turn)"
        expected = "assistant" if role == "user" else "user"
    if not any(m["role"] == "assistant" for m in messages):
        return "the conversation has no assistant turn to learn from"
    return None


@dataclass(frozen=True)
class Prompt:
    """``task.data.prompt`` of generative tasks on a decoder.

    Args:
        template: the prompt text; ``{column}`` fields are filled from the row (``{source}``: the source text).
            ``\\n`` and ``\\t`` written as two characters (as a command-line override passes them) are a newline and a tab.
        completion_prefix: put before the target when there is no chat template (the template ends with
            ``Headline:``: a space).
        chat: wrap the template's text in the tokenizer's chat template (user turn; the target is the
            assistant turn, ended by the template's end-of-turn token).
        system: a system message for chat templates.
        truncation: a prompt longer than ``max_length`` minus its completion: ``source`` cuts the end of its
            source text (the instructions around it stay; conversations lose their start instead), ``start``
            cuts tokens from the prompt's start (both counted in the log), ``error`` stops naming the rows.
        shots: solved examples put before every row (in-context learning; 0: none).
        shot_separator: between the examples and before the row, without a chat template.
        shot_max_tokens: drawn examples' source texts are cut to this many tokens (long articles; ``None``: whole).
        examples: the solved examples: the template's fields plus ``completion``; ``None``: ``shots`` rows drawn
            from the train split.
    """

    template: str = "{source}"
    completion_prefix: str = " "
    chat: bool = False
    system: str | None = None
    truncation: Literal["source", "start", "error"] = "source"
    shots: int = 0
    shot_separator: str = "\n\n"
    shot_max_tokens: int | None = None
    examples: Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        for key in ("template", "completion_prefix", "system", "shot_separator"):  # a command line passes "\n" as two characters
            if isinstance(value := getattr(self, key), str):
                object.__setattr__(self, key, value.replace("\\n", "\n").replace("\\t", "\t"))
        if self.truncation not in ("source", "start", "error"):
            raise ConfigError(f"{KEY}.truncation must be 'source', 'start' or 'error', got {self.truncation!r}")
        try:
            self.fields()
        except ValueError as err:
            raise ConfigError(f"{KEY}.template {self.template!r} is not a valid template: {err}") from err
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ConfigError(f"{KEY}.shots must be a whole number >= 0, got {self.shots!r}")
        if self.examples is not None:
            object.__setattr__(self, "examples", tuple(dict(e) for e in self.examples))
            self._check_examples()

    def _check_examples(self) -> None:
        for i, example in enumerate(self.examples or ()):
            missing = [f for f in [*self.fields(), COMPLETION_FIELD] if f not in example]
            if missing:
                raise ConfigError(f"{KEY}.examples[{i}] lacks {', '.join(missing)}: a few-shot example holds the "
                                  f"template's fields ({', '.join(self.fields())}) and its {COMPLETION_FIELD}")

    def with_examples(self, examples: Sequence[Mapping[str, Any]]) -> Prompt:
        """These settings with ``examples`` as the few-shot examples."""
        return replace(self, examples=examples)

    def fields(self) -> list[str]:
        """The ``{field}`` names of the template."""
        return [name for _, name, _, _ in string.Formatter().parse(self.template) if name]

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{KEY}.chat=true, but tokenizer {tokenizer.name_or_path} has no chat template: use an instruct model "
                f"(e.g. model=smollm2-135m) or set {KEY}.chat=false to use {KEY}.template alone"
            )
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {tokenizer.name_or_path} has no eos token to end a completion with")

    def check_columns(self, columns: Sequence[str], split: str, where: str) -> None:
        """A DataError when the template names a column that the split lacks (``columns``: the user's)."""
        missing = [f for f in self.fields() if f != SOURCE_FIELD and f not in columns]
        if missing:
            raise DataError(
                f"{KEY}.template names {', '.join('{' + f + '}' for f in missing)}, which split '{split}' of {where} "
                f"lacks; its columns are {list(columns)} ({{{SOURCE_FIELD}}} is the source text)"
            )

    def text(self, row: Mapping[str, Any]) -> str:
        return self.template.format_map({k: "" if v is None else v for k, v in row.items()})

    def _messages(self, text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        shots = [turn for e in self.examples or () for turn in ({"role": "user", "content": self.text(e)},
                                                                 {"role": "assistant", "content": str(e[COMPLETION_FIELD])})]
        return [*system, *shots, {"role": "user", "content": text}]

    def _with_shots(self, text: str) -> str:
        """``text`` after the few-shot examples (no chat template)."""
        shots = [self.text(e) + self.completion_prefix + str(e[COMPLETION_FIELD]) for e in self.examples or ()]
        return self.shot_separator.join([*shots, text])

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any],
               target: str | None) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and of the completion (empty without a target)."""
        text = self.text(row)
        if not self.chat:
            prompt = tokenizer(self._with_shots(text))["input_ids"]
            if target is None:
                return prompt, []
            return prompt, tokenizer(self.completion_prefix + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        messages = self._messages(text)
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        if target is None:
            return prompt, []
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": target}], tokenize=False)
        if not full.startswith(prompt_text):
            raise ConfigError(
                f"the chat template of {tokenizer.name_or_path} does not render the assistant turn after its generation "
                f"prompt, so the completion cannot be told apart; set {KEY}.chat=false"
            )
        return prompt, tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"]

    def encode_conversation(self, tokenizer: PreTrainedTokenizerBase, messages: list[Mapping[str, str]]) -> Encoded:
        """A chat conversation ending with an assistant turn: the prompt is everything before that turn, the
        completion that turn, and the earlier assistant turns are labelled too (the loss covers every
        assistant turn and nothing else). A conversation ending with a user turn is all prompt."""
        if self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}, *messages]
        ids: list[int] = []
        labels: list[int] = []
        rendered = ""
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if message["role"] != "assistant" and i < last:
                continue
            before = tokenizer.apply_chat_template(messages[:i + (message["role"] != "assistant")],
                                                   add_generation_prompt=True, tokenize=False)
            if not before.startswith(rendered):
                raise ConfigError(f"the chat template of {tokenizer.name_or_path} renders a conversation's start "
                                  f"differently once it goes on, so its turns cannot be told apart")
            segment = tokenizer(before[len(rendered):], add_special_tokens=False)["input_ids"]
            ids += segment
            labels += [IGNORE_INDEX] * len(segment)
            if message["role"] != "assistant":  # a prediction: the conversation ends with the user
                return ids, labels, []
            after = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
            if not after.startswith(before):
                raise ConfigError(f"the chat template of {tokenizer.name_or_path} does not render the assistant turn "
                                  f"after its generation prompt, so the completion cannot be told apart")
            answer = tokenizer(after[len(before):], add_special_tokens=False)["input_ids"]
            if i == last:
                return ids, labels, answer
            ids += answer
            labels += answer
            rendered = after
        raise AssertionError("unreachable: the last message returns")

    def stop_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Where generation stops: eos, and with a chat template the special tokens that end an assistant turn
        (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``)."""
        ids = [tokenizer.eos_token_id]
        if self.chat:
            _, completion = self.encode(tokenizer, {f: "x" for f in [SOURCE_FIELD, *self.fields()]}, "x")
            special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
            ids += [i for i in completion if i in special and i not in ids]
        return ids
