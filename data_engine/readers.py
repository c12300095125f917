"""Row readers: how one source row maps onto a task's normalized fields, or why it is skipped.

    t2i            image, caption
    edit           source_image, instruction, target_image
    understanding  image, question, answer   (an empty question is allowed: plain captioning)

Rows hold either plain columns (`image`/`file`/`file_name`, `caption`, `question`, `answer`, `source_image`,
`instruction`, `target_image`; renames are allowed) or the TRL / LLaMA-Factory conversation convention: `messages`
(or ShareGPT `conversations`) plus `images`, with an `<image>` placeholder (or an image content part) marking where
the image sits. A reader returns a `RawRow` (texts stripped, images not yet loaded) or raises `RowSkip`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmgen.errors import UserError

from .validation import BAD_ROW, MISSING_IMAGE, RowSkip, require_text

TASKS: tuple[str, ...] = ("t2i", "edit", "understanding")
IMAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "t2i": ("image",),
    "edit": ("source_image", "target_image"),
    "understanding": ("image",),
}
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "t2i": ("caption",),
    "edit": ("instruction",),
    "understanding": ("question", "answer"),
}
OPTIONAL_TEXT_FIELDS = frozenset({"question"})

# Column names accepted for a field, first match wins: caption tables often call the image `file`, and Hugging
# Face's imagefolder metadata calls it `file_name`.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "file", "file_name"),
    "caption": ("caption",),
    "question": ("question",),
    "answer": ("answer",),
    "source_image": ("source_image",),
    "instruction": ("instruction",),
    "target_image": ("target_image",),
}
CONVERSATION_COLUMNS = ("messages", "conversations")
CONVERSATION_IMAGE_COLUMNS = ("images", "image")
IMAGE_PLACEHOLDER = "<image>"
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "model"})
TABLE_ROW_COLUMN = "row"  # a table source stores each row as one JSON string: rows may differ in keys and types
TABLE_METADATA_COLUMN = "metadata"  # a table row's other keys, as JSON
TABLE_ERROR_KEY = "__mmgen_error__"  # marks a table line that could not be parsed; the reader turns it into a skip
TABLE_LINE_KEY = "__mmgen_line__"  # the 1-based line of the table file a row came from (JSONL, CSV)


@dataclass(frozen=True)
class RawRow:
    """A row's normalized fields: stripped texts, image cells (not yet loaded) and extra output columns."""

    texts: dict[str, str]
    images: dict[str, Any]
    extras: dict[str, str] = field(default_factory=dict)


class RowReader(Protocol):
    task: str
    columns: tuple[str, ...]  # source columns the reader reads
    extra_columns: tuple[str, ...]  # string columns the reader adds to the output

    def read(self, row: Mapping[str, Any]) -> RawRow: ...

    def image_cells(self, row: Mapping[str, Any]) -> list[Any]: ...

    def line_of(self, row: Mapping[str, Any]) -> int | None: ...


@dataclass(frozen=True)
class ColumnReader:
    """Plain columns: each normalized field read from the first of its candidate columns that the row fills."""

    task: str
    mapping: dict[str, tuple[str, ...]]  # field -> candidate source columns, in order of preference
    extra_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(column for candidates in self.mapping.values() for column in candidates))

    def value(self, row: Mapping[str, Any], name: str) -> Any:
        return next((row[c] for c in self.mapping[name] if row.get(c) is not None), None)

    def read(self, row: Mapping[str, Any]) -> RawRow:
        texts = {}
        for name in TEXT_FIELDS[self.task]:
            value = self.value(row, name)
            blank = value is None or (isinstance(value, str) and not value.strip())
            texts[name] = "" if blank and name in OPTIONAL_TEXT_FIELDS else require_text(value, name)
        images = {name: self.value(row, name) for name in IMAGE_FIELDS[self.task]}
        for name, cell in images.items():
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                keys = " or ".join(f"'{column}'" for column in self.mapping[name])
                raise RowSkip(MISSING_IMAGE, f"no {name}: the row has no {keys} key, or it is empty")
        return RawRow(texts, images)

    def image_cells(self, row: Mapping[str, Any]) -> list[Any]:
        return [self.value(row, name) for name in IMAGE_FIELDS[self.task]]

    def line_of(self, row: Mapping[str, Any]) -> int | None:
        return None


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    has_image: bool


def parse_turn(message: Any) -> Turn:
    """One chat message: TRL/OpenAI `{"role", "content"}` (content a string or a list of typed parts) or ShareGPT
    `{"from", "value"}`. The `<image>` placeholder is removed from the text and recorded as `has_image`."""
    if not isinstance(message, Mapping):
        raise RowSkip(BAD_ROW, f"a message is a {type(message).__name__}, not an object")
    role = str(message.get("role") or message.get("from") or "").lower()
    content = message.get("content", message.get("value"))
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, Mapping)]
        text = "".join(str(part.get("text") or "") for part in parts if part.get("type") == "text")
        has_image = any(part.get("type") == "image" for part in parts) or IMAGE_PLACEHOLDER in text
    else:
        text = "" if content is None else str(content)
        has_image = IMAGE_PLACEHOLDER in text
    return Turn(role, text.replace(IMAGE_PLACEHOLDER, "").strip(), has_image)


def first_exchange(messages: Any) -> tuple[Turn, Turn]:
    """The first user turn and the first assistant turn after it; system turns and later turns are ignored."""
    if not isinstance(messages, list) or not messages:
        raise RowSkip(BAD_ROW, "no messages")
    turns = [parse_turn(message) for message in messages]
    user = next((i for i, turn in enumerate(turns) if turn.role in USER_ROLES), None)
    if user is None:
        raise RowSkip(BAD_ROW, "no user turn in messages")
    reply = next((turn for turn in turns[user + 1:] if turn.role in ASSISTANT_ROLES), None)
    if reply is None:
        raise RowSkip(BAD_ROW, "no assistant turn after the user turn")
    return turns[user], reply


@dataclass(frozen=True)
class ConversationReader:
    """The TRL / LLaMA-Factory convention: a conversation column plus an image list (exactly one image per row).

    understanding: question = the user's text, answer = the assistant's reply.
    t2i: the caption is the text of the turn that does not hold the image: the assistant's reply when `<image>`
    sits in the user turn (captioning data), else the user's text (a prompt whose answer is the image).
    """

    task: str
    messages_column: str
    images_column: str
    extra_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.messages_column, self.images_column)

    def read(self, row: Mapping[str, Any]) -> RawRow:
        user, reply = first_exchange(row.get(self.messages_column))
        images = self.image_cells(row)
        if len(images) != 1:
            kind = MISSING_IMAGE if not images else BAD_ROW
            raise RowSkip(kind, f"expected exactly one image in '{self.images_column}', got {len(images)}")
        if self.task == "understanding":
            texts = {"question": user.text, "answer": require_text(reply.text, "answer")}
        else:
            texts = {"caption": require_text(reply.text if user.has_image else user.text, "caption")}
        return RawRow(texts, {"image": images[0]})

    def image_cells(self, row: Mapping[str, Any]) -> list[Any]:
        images = row.get(self.images_column)
        if images is None:
            return []
        return list(images) if isinstance(images, (list, tuple)) else [images]

    def line_of(self, row: Mapping[str, Any]) -> int | None:
        return None


@dataclass(frozen=True)
class TableRowReader:
    """A table row stored as one JSON string; other keys of the row go to a `metadata` JSON column."""

    inner: ColumnReader | ConversationReader
    columns: tuple[str, ...] = (TABLE_ROW_COLUMN,)
    extra_columns: tuple[str, ...] = (TABLE_METADATA_COLUMN,)

    @property
    def task(self) -> str:
        return self.inner.task

    def read(self, row: Mapping[str, Any]) -> RawRow:
        record = self._record(row)
        raw = self.inner.read(record)
        extras = {key: value for key, value in record.items()
                  if key not in self.inner.columns and key != TABLE_LINE_KEY}
        return RawRow(raw.texts, raw.images, {TABLE_METADATA_COLUMN: json.dumps(extras)})

    def image_cells(self, row: Mapping[str, Any]) -> list[Any]:
        try:
            return self.inner.image_cells(self._record(row))
        except RowSkip:
            return []

    def line_of(self, row: Mapping[str, Any]) -> int | None:
        return json.loads(row[TABLE_ROW_COLUMN]).get(TABLE_LINE_KEY)

    @staticmethod
    def _record(row: Mapping[str, Any]) -> dict[str, Any]:
        record = json.loads(row[TABLE_ROW_COLUMN])
        if TABLE_ERROR_KEY in record:
            raise RowSkip(BAD_ROW, record[TABLE_ERROR_KEY])
        return record


def resolve_reader(task: str, columns: Sequence[str], renames: Mapping[str, str] | None, where: str):
    """The reader for `task` over a source with `columns`: plain columns, else a conversation column."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    renames = dict(renames or {})
    fields = IMAGE_FIELDS[task] + TEXT_FIELDS[task]
    unknown = sorted(set(renames) - set(fields))
    if unknown:
        raise UserError(f"--column {unknown[0]}=...: task {task} has the fields {', '.join(fields)}")
    for name, column in renames.items():
        if column not in columns:
            raise UserError(f"{where}: no column '{column}' for {name} (columns: {', '.join(columns)})")
    mapping = {name: (renames[name],) if name in renames else tuple(c for c in FIELD_ALIASES[name] if c in columns)
               for name in fields}
    missing = [name for name, candidates in mapping.items() if not candidates]
    if not missing:
        return ColumnReader(task, mapping)
    conversation = next((c for c in CONVERSATION_COLUMNS if c in columns), None)
    images = next((c for c in CONVERSATION_IMAGE_COLUMNS if c in columns), None)
    if conversation and images and task != "edit":
        return ConversationReader(task, conversation, images)
    wanted = ", ".join(name + (f" (or {' or '.join(FIELD_ALIASES[name][1:])})" if len(FIELD_ALIASES[name]) > 1
                                else "") for name in missing)
    raise UserError(f"{where}: task {task} needs the columns {wanted}; found columns: "
                    f"{', '.join(columns) or 'none'}{_task_hint(task, columns)}")


def _task_hint(task: str, columns: Sequence[str]) -> str:
    if task != "edit" and "source_image" in columns:
        return " (edit triplets? use --task edit)"
    if task != "understanding" and "question" in columns:
        return " (questions and answers? use --task understanding)"
    if task == "edit" and any(c in columns for c in CONVERSATION_COLUMNS):
        return " (edits need source_image, instruction and target_image columns, not conversations)"
    return ""
