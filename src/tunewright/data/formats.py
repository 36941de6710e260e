"""Input formats: detect which one a file uses and normalise its rows to `Example`s.

Each normaliser takes a row (already renamed through `data.columns`) and returns an `Example`
or raises `RowError` naming the field and the reason; preparation turns that into a
quarantine entry with the row's `file:line`. Unknown extra columns are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tunewright.data.quarantine import RowError
from tunewright.dataset.example import ROLES, Example, Message

# The role strings of the canonical example: one shared object each, not one per parsed row.
_ROLE = {role: role for role in ROLES}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _missing(name: str) -> RowError:
    return RowError(f"field '{name}': missing", "missing field", field=name)


def _text_field(row: dict, name: str, *, required: bool = True) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # CSV/Parquet labels are often numbers
        else:
            raise RowError(f"field '{name}': expected text, got {_type_name(value)}", "wrong type")
    if required and not value.strip():
        raise RowError(f"field '{name}': empty", "empty content")
    return value


def _blank(text: str) -> bool:
    return not text or text.isspace()  # no stripped copy: this runs for every message


def check_turns(messages: list[Message] | tuple[Message, ...], field: str) -> tuple[Message, ...]:
    """Check a conversation's shape: non-empty turns, system first, user/assistant alternating
    from a user turn, and at least one assistant turn to learn from."""
    if not messages:
        raise RowError(f"field '{field}': no messages", "empty content")
    previous = None  # role of the previous non-system turn
    for i, m in enumerate(messages):
        if _blank(m.content):
            raise RowError(f"field '{field}[{i}].content': empty", "empty content")
        if m.role == "system":
            if i != 0:
                raise RowError(
                    f"field '{field}[{i}].role': 'system' is only allowed first",
                    "roles out of order",
                )
            continue
        if previous is None and m.role != "user":
            raise RowError(
                f"field '{field}': the first non-system turn must be 'user', got '{m.role}'",
                "roles out of order",
            )
        if m.role == previous:
            raise RowError(
                f"field '{field}': two '{m.role}' turns in a row (roles must alternate)",
                "roles out of order",
            )
        previous = m.role
    if not any(m.role == "assistant" for m in messages):
        raise RowError(f"field '{field}': no assistant turn to learn from", "no assistant turn")
    return tuple(messages)


def _messages(row: dict, source: str = "") -> Example:
    # One pass both builds the messages and checks the turns (`check_turns`' rules, inlined:
    # this runs for every row). A turn problem is remembered and raised after the loop, so a
    # type error in a later message is still the one reported, as with two passes.
    raw = row.get("messages")
    if raw is None:
        raise _missing("messages")
    if not isinstance(raw, list):
        raise RowError(f"field 'messages': expected a list, got {_type_name(raw)}", "wrong type")
    if not raw:
        raise RowError("field 'messages': no messages", "empty content")
    out = []
    turn_error = None
    previous = None  # role of the previous non-system turn
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(
                f"field 'messages[{i}]': expected an object, got {_type_name(m)}", "wrong type"
            )
        try:
            role = _ROLE[m["role"]]
        except (KeyError, TypeError):  # missing, unknown, or unhashable (a list)
            raise RowError(
                f"field 'messages[{i}].role': unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})",
                "unknown role",
            ) from None
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(
                f"field 'messages[{i}].content': expected text, got {_type_name(content)}",
                "wrong type",
            )
        weight = m.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise RowError(
                    f"field 'messages[{i}].weight': expected a number >= 0, got {weight!r}",
                    "wrong type",
                )
            weight = float(weight)
        out.append(Message(role, content, weight))
        if turn_error is None:
            if not content or content.isspace():
                turn_error = (f"field 'messages[{i}].content': empty", "empty content")
            elif role == "system":
                if i:
                    turn_error = (
                        f"field 'messages[{i}].role': 'system' is only allowed first",
                        "roles out of order",
                    )
            elif previous is None and role != "user":
                turn_error = (
                    f"field 'messages': the first non-system turn must be 'user', got '{role}'",
                    "roles out of order",
                )
            elif role == previous:
                turn_error = (
                    f"field 'messages': two '{role}' turns in a row (roles must alternate)",
                    "roles out of order",
                )
            else:
                previous = role
    if turn_error is not None:
        raise RowError(*turn_error)
    if "assistant" not in (m.role for m in out):
        raise RowError("field 'messages': no assistant turn to learn from", "no assistant turn")
    return Example(tuple(out), None, None, source)


_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def _sharegpt(row: dict, source: str = "") -> Example:
    raw = row.get("conversations")
    if raw is None:
        raise _missing("conversations")
    if not isinstance(raw, list):
        raise RowError(
            f"field 'conversations': expected a list, got {_type_name(raw)}", "wrong type"
        )
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(
                f"field 'conversations[{i}]': expected an object, got {_type_name(m)}", "wrong type"
            )
        speaker = m.get("from")
        if not isinstance(speaker, str) or speaker not in _SHAREGPT_ROLES:
            raise RowError(
                f"field 'conversations[{i}].from': unknown speaker {speaker!r} (expected human, gpt or system)",
                "unknown role",
            )
        value = m.get("value")
        if not isinstance(value, str):
            raise RowError(
                f"field 'conversations[{i}].value': expected text, got {_type_name(value)}",
                "wrong type",
            )
        out.append(Message(_SHAREGPT_ROLES[speaker], value))
    return Example(messages=check_turns(out, "conversations"), source=source)


def _prompt_completion(row: dict, source: str = "") -> Example:
    prompt = _text_field(row, "prompt")
    completion = _text_field(row, "completion")
    return Example(
        messages=(Message("user", prompt), Message("assistant", completion)), source=source
    )


def _alpaca(row: dict, source: str = "") -> Example:
    instruction = _text_field(row, "instruction")
    extra = _text_field(row, "input", required=False)
    output = _text_field(row, "output")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return Example(messages=(Message("user", prompt), Message("assistant", output)), source=source)


def _text(row: dict, source: str = "") -> Example:
    return Example(text=_text_field(row, "text"), source=source)


def _text_label(row: dict, source: str = "") -> Example:
    text = _text_field(row, "text")
    label = _text_field(row, "label").strip()
    return Example(
        messages=(Message("user", text), Message("assistant", label)), label=label, source=source
    )


# --- Preference pairs (DPO/ORPO): each becomes an Example with `rejected` set. ---


def _chat(raw: object, field: str) -> tuple[Message, ...]:
    """A list of `{role, content}` objects, checked for type and known roles (not turn order:
    `_pair` checks the whole prompt + chosen chat once it is assembled)."""
    if not isinstance(raw, list):
        raise RowError(f"field '{field}': expected a list, got {_type_name(raw)}", "wrong type")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(
                f"field '{field}[{i}]': expected an object, got {_type_name(m)}", "wrong type"
            )
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLE:
            raise RowError(
                f"field '{field}[{i}].role': unknown role {role!r} (expected one of {', '.join(ROLES)})",
                "unknown role",
            )
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(
                f"field '{field}[{i}].content': expected text, got {_type_name(content)}",
                "wrong type",
            )
        out.append(Message(_ROLE[role], content))
    return tuple(out)


def _side(row: dict, name: str) -> tuple[tuple[Message, ...], str]:
    """One side of a pair: (the messages before its final answer, the final answer's text).
    A side is a string (the answer alone) or a message list ending with an assistant turn."""
    value = row.get(name)
    if value is None:
        raise RowError(f"field '{name}': missing", "missing field", field=name)
    if isinstance(value, str):
        if _blank(value):
            raise RowError(f"field '{name}': empty", "empty content", field=name)
        return (), value
    messages = _chat(value, name)
    if not messages:
        raise RowError(f"field '{name}': no messages", "empty content", field=name)
    last = messages[-1]
    if last.role != "assistant":
        raise RowError(
            f"field '{name}': the last message must be the assistant's answer, got '{last.role}'",
            "side not an assistant answer",
            field=name,
        )
    if _blank(last.content):
        raise RowError(
            f"field '{name}[{len(messages) - 1}].content': empty", "empty content", field=name
        )
    return messages[:-1], last.content


def _pair(
    prompt: tuple[Message, ...],
    row: dict,
    chosen_name: str,
    rejected_name: str,
    source: str,
) -> Example:
    """The Example of a pair: prompt + chosen answer as `messages`, the rejected answer text as
    `rejected`. Both sides must answer the same conversation, and differ in the answer."""
    chosen_before, chosen = _side(row, chosen_name)
    rejected_before, rejected = _side(row, rejected_name)
    if chosen_before != rejected_before:
        at = next(
            (i for i, (a, b) in enumerate(zip(chosen_before, rejected_before)) if a != b),
            min(len(chosen_before), len(rejected_before)),
        )
        raise RowError(
            f"field '{rejected_name}': differs from '{chosen_name}' before the final answer "
            f"(message {at}); both sides must answer the same conversation",
            "sides differ before the answer",
            field=rejected_name,
        )
    if chosen == rejected:
        raise RowError(
            f"field '{rejected_name}': identical to '{chosen_name}' (nothing to prefer)",
            "identical chosen and rejected",
            field=rejected_name,
        )
    messages = (*prompt, *chosen_before, Message("assistant", chosen))
    return Example(messages=check_turns(messages, chosen_name), source=source, rejected=rejected)


def _preference(row: dict, source: str = "") -> Example:
    """TRL's explicit-prompt form: `prompt`, `chosen`, `rejected` (strings or message lists)."""
    raw = row.get("prompt")
    if raw is None:
        raise _missing("prompt")
    if isinstance(raw, str):
        if _blank(raw):
            raise RowError("field 'prompt': empty", "empty content")
        prompt: tuple[Message, ...] = (Message("user", raw),)
    else:
        prompt = _chat(raw, "prompt")
        if not prompt:
            raise RowError("field 'prompt': no messages", "empty content")
    return _pair(prompt, row, "chosen", "rejected", source)


# Anthropic's hh-rlhf files keep each chat as one string of "\n\nHuman: ..." and
# "\n\nAssistant: ..." turns.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_chat(text: str, name: str) -> list[dict]:
    """An hh-rlhf transcript string as `{role, content}` messages."""
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise RowError(
            f"field '{name}': expected a list of messages (the whole chat) or an hh-rlhf "
            "transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...'), got other text",
            "wrong type",
            field=name,
        )
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(pieces[1::2], pieces[2::2])
    ]


def _chosen_rejected(row: dict, source: str = "") -> Example:
    """Full chats (Anthropic HH, TRL's implicit prompt): `chosen` and `rejected` share every
    message but the final assistant answer, and that shared part is the prompt. Each chat is a
    message list, or an hh-rlhf transcript string."""
    sides = {name: row.get(name) for name in ("chosen", "rejected")}
    if any(isinstance(value, str) for value in sides.values()):
        row = dict(row)
        for name, value in sides.items():
            if isinstance(value, str):
                row[name] = _hh_chat(value, name)
    return _pair((), row, "chosen", "rejected", source)


def _openai_preference(row: dict, source: str = "") -> Example:
    """OpenAI's DPO JSONL: `input.messages`, `preferred_output`, `non_preferred_output`."""
    raw = row.get("input")
    if raw is None:
        raise _missing("input")
    if not isinstance(raw, dict):
        raise RowError(f"field 'input': expected an object, got {_type_name(raw)}", "wrong type")
    if raw.get("messages") is None:
        raise _missing("input.messages")
    prompt = _chat(raw["messages"], "input.messages")
    if not prompt:
        raise RowError("field 'input.messages': no messages", "empty content")
    return _pair(prompt, row, "preferred_output", "non_preferred_output", source)


# Each takes a row (a dict) and its `file:line`, and returns the example or raises RowError.
NORMALISERS: dict[str, Callable[[dict, str], Example]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "alpaca": _alpaca,
    "text_label": _text_label,
    "text": _text,
    "preference": _preference,
    "chosen_rejected": _chosen_rejected,
    "openai_preference": _openai_preference,
}

# Which keys identify a format, most specific first.
_SIGNATURES: list[tuple[str, frozenset[str]]] = [
    ("messages", frozenset({"messages"})),
    ("openai_preference", frozenset({"input", "preferred_output", "non_preferred_output"})),
    ("preference", frozenset({"prompt", "chosen", "rejected"})),
    ("chosen_rejected", frozenset({"chosen", "rejected"})),
    ("sharegpt", frozenset({"conversations"})),
    ("alpaca", frozenset({"instruction", "output"})),
    ("prompt_completion", frozenset({"prompt", "completion"})),
    ("text_label", frozenset({"text", "label"})),
    ("text", frozenset({"text"})),
]


def detect_format(keys: set[str], where: str) -> str:
    """Name the format whose keys a row has; explain when none or several match."""
    matches = [name for name, need in _SIGNATURES if need <= keys]
    # text ⊂ text_label: the more specific one wins
    if "text_label" in matches:
        matches.remove("text")
    # chosen+rejected ⊂ prompt+chosen+rejected: likewise
    if "preference" in matches:
        matches.remove("chosen_rejected")
    if len(matches) == 1:
        return matches[0]
    if not matches:
        near = [
            f"{name} needs {'+'.join(sorted(need))} but '{min(need - keys)}' is missing"
            for name, need in _SIGNATURES
            if need & keys and len(need - keys) == 1
        ]
        hint = f" ({'; '.join(near)})" if near else ""
        raise RowError(
            f"{where}: cannot tell the format from the columns {sorted(keys)}{hint}; expected one of "
            "messages | conversations | instruction+output | prompt+completion | text+label | text "
            "| prompt+chosen+rejected | chosen+rejected | input+preferred_output+non_preferred_output. "
            "Set data.format, or map your columns with data.columns (e.g. {label: category}).",
            "unknown format",
        )
    raise RowError(
        f"{where}: the columns {sorted(keys)} fit several formats ({', '.join(matches)}); set data.format",
        "unknown format",
    )


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """Apply the recipe's `data.columns` mapping (canonical name -> the user's column name)."""
    if not columns:
        return row
    renamed = dict(row)
    for canonical, theirs in columns.items():
        if theirs in renamed:
            renamed[canonical] = renamed.pop(theirs)
    return renamed
