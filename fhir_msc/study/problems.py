"""How a study file's mistakes are told: one line each, at its YAML path and line, with a did-you-mean.

pydantic's validation errors become :class:`Problem` s. A path is written as in the YAML
(``arms[1].code``), without the tags pydantic adds for each alternative of a union: the errors of
one place are one problem. A misspelt key or value gets the nearest allowed one (difflib), found
from the model's own fields and ``Literal`` values. The study's cross-reference checks raise one
line per problem, each starting with its path; a check of one part of the file (an outcome, the
AE section) may start its line with a path relative to that part (``unit: …``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import StudyDefinitionError

Part = str | int  # a mapping key or a list index
LISTED = 12  # allowed values listed in a message, at most


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """One mistake in a study file."""

    path: str  # its YAML path, e.g. arms[1].code ("" for the whole file)
    message: str  # what is wrong, and what to do
    line: int | None = None  # the line of the file (1 = the first) where it is, when known
    value: Any = None  # what the file holds at ``path`` (None when it holds nothing there)
    suggestion: str | None = None  # the allowed key or value nearest a misspelt one

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidStudyDefinition(StudyDefinitionError):
    """A study file that is YAML but not a valid study definition: its problems, one line each."""

    def __init__(self, file: Path, problems: Sequence[Problem]):
        self.file, self.problems = file, tuple(problems)
        lines = [f"  {f'line {p.line}: ' if p.line else ''}{p}" for p in self.problems]
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__("\n".join([f"{file}: invalid study definition ({count}):", *lines]))


def yaml_path(parts: Iterable[Part]) -> str:
    """``('arms', 1, 'code')`` as ``arms[1].code``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def path_parts(path: str) -> list[Part]:
    """``arms[1].code`` as ``['arms', 1, 'code']``."""
    return [int(index) if index else key for index, key in _PATH_PART.findall(path)]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest ``word`` (ignoring case), None if none is near enough to be a misspelling."""
    by_folded = {choice.casefold(): choice for choice in choices}
    found = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.6)
    return by_folded[found[0]] if found else None


def listing(choices: Sequence[str]) -> str:
    """Allowed values for a message: all of them, or the first ``LISTED`` and how many more."""
    shown = ", ".join(choices[:LISTED])
    return shown + (f" and {len(choices) - LISTED} more" if len(choices) > LISTED else "")


def unknown(what: str, value: object, choices: Iterable[str]) -> str:
    """``unknown arm 'TRX': did you mean 'TRT'?``, or ``unknown arm 'X': use one of CTL, TRT`` when none is near."""
    known = list(choices)
    return f"unknown {what} {value!r}" + (suggested(value, known)
                                          or f": use one of {listing(known) or '(none declared)'}")


def suggested(value: object, choices: Iterable[str]) -> str:
    """``: did you mean 'TRT'?`` when a choice is near ``value``, else empty."""
    best = did_you_mean(value, choices) if isinstance(value, str) else None
    return f": did you mean {best!r}?" if best is not None else ""


def problems_of(error: ValidationError, data: object, text: str, model: type[BaseModel]) -> list[Problem]:
    """Each mistake ``error`` reports about ``data`` (read from the YAML ``text``), once, at its YAML path."""
    at: dict[tuple[Part, ...], list[dict]] = {}
    for details in error.errors(include_url=False):
        at.setdefault(_data_parts(details["loc"], data, details["type"]), []).append(details)
    found: list[tuple[tuple[Part, ...], str, str | None]] = []
    for parts, errors in at.items():
        found += _told(parts, errors, data, model)
    suggested = {parts[:-1] + (suggestion,) for parts, _, suggestion in found if suggestion is not None}
    nodes = _nodes(text)
    return [Problem(path=yaml_path(parts), message=message, line=_line(nodes, parts), value=_value(data, parts),
                    suggestion=suggestion)
            for parts, message, suggestion in found
            if not (message == _MISSING and parts in suggested)]  # "missing" told with the misspelt key


_MISSING = "required: add it"


def _told(parts: tuple[Part, ...], errors: list[dict], data: object,
          model: type[BaseModel]) -> list[tuple[tuple[Part, ...], str, str | None]]:
    """The problems of one place: (path, message, suggestion) each."""
    kinds = {e["type"] for e in errors}
    value = errors[0]["input"]
    if kinds == {"missing"}:
        return [(parts, _MISSING if isinstance(parts[-1], str) else "missing: the list is one item short", None)]
    if kinds == {"extra_forbidden"}:
        present = set(_value(data, parts[:-1]) or ())
        allowed = [key for key in _keys_at(model, parts[:-1]) if key not in present]
        best = did_you_mean(str(parts[-1]), allowed)
        advice = f"did you mean {best!r}?" if best else f"use {listing(allowed) or 'none: every key is given'}"
        return [(parts, f"unknown key: {advice}", best)]
    if kinds == {"literal_error"}:
        allowed = [str(v) for v in _literals_at(model, parts)]
        best = did_you_mean(value, allowed) if isinstance(value, str) else None
        advice = f"did you mean {best!r}? (allowed: {listing(allowed)})" if best else f"use one of {listing(allowed)}"
        return [(parts, f"{_shown(value)} is not an allowed value: {advice}", best)]
    own = [e for e in errors if not e["msg"].startswith("Input should be ")]
    if not own and len(errors) > 1:  # every alternative of a union refused the value
        expected = dict.fromkeys(_MODEL_TYPE.sub("a mapping", e["msg"].removeprefix("Input should be ").split(",")[0])
                                 for e in errors)
        return [(parts, f"{_shown(value)} should be {' or '.join(expected)}", None)]
    told = []
    for details in own or errors:
        for line in dict.fromkeys(details["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
                                  .splitlines()):
            told.append(_relative(parts, line, data, model) if details["type"] in ("value_error", "assertion_error")
                        else (parts, _rephrased(line, details["input"]), None))
    return told


def _rephrased(message: str, value: object) -> str:
    """pydantic's "Input should be a valid integer" as "'five' should be a valid integer", its dictionaries (of a
    model) as YAML's mappings."""
    if message.startswith("Input should be "):
        expected = _MODEL_TYPE.sub("a mapping", message.removeprefix("Input should be "))
        return f"{_shown(value)} should be {expected}"
    return message


_MODEL_TYPE = re.compile(r"a valid dictionary( or instance of \w+)?")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


_LINE_PATH = re.compile(r"^([A-Za-z_][\w-]*(?:\[\d+\]|\.[\w@+-]+)*): (.+)$")


def _relative(parts: tuple[Part, ...], line: str, data: object,
              model: type[BaseModel]) -> tuple[tuple[Part, ...], str, str | None]:
    """A check's line, its leading path (relative to ``parts``) joined to ``parts`` when it names a key there."""
    match = _LINE_PATH.match(line)
    if match:
        relative = path_parts(match.group(1))
        here = _value(data, parts)
        if isinstance(here, dict) and relative[0] in here or relative[0] in _keys_at(model, parts):
            return (*parts, *relative), match.group(2), None
    return parts, line, None


def _data_parts(loc: tuple[Part, ...], data: object, kind: str) -> tuple[Part, ...]:
    """``loc`` without pydantic's tags for union alternatives (``literal[…]``, ``str``): the parts found in ``data``.

    A missing key is not in the data: the last part of a "missing" error is kept.
    """
    kept, here = [], data
    for index, part in enumerate(loc):
        if isinstance(here, dict) and part in here:
            here = here[part]
        elif isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here):
            here = here[part]
        elif kind == "missing" and index == len(loc) - 1:
            pass
        else:
            continue
        kept.append(part)
    return tuple(kept)


def _value(data: object, parts: Sequence[Part]) -> Any:
    """What ``data`` holds at ``parts``, None if nothing."""
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _alternatives(annotations: Iterable[Any]) -> list[Any]:
    """The types a value of these annotations may have: unions and ``Annotated`` unwrapped."""
    found = []
    for annotation in annotations:
        origin = get_origin(annotation)
        if origin is Annotated:
            found += _alternatives([get_args(annotation)[0]])
        elif origin in (Union, types.UnionType):
            found += _alternatives(get_args(annotation))
        else:
            found.append(annotation)
    return found


def _types_at(model: type[BaseModel], parts: Sequence[Part]) -> list[Any]:
    """The types the model allows at ``parts`` (several where a union allows several)."""
    current: list[Any] = [model]
    for part in parts:
        below = []
        for kind in _alternatives(current):
            origin, args = get_origin(kind), get_args(kind)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                if part in kind.model_fields:
                    below.append(kind.model_fields[part].annotation)
            elif origin is list and isinstance(part, int):
                below.append(args[0])
            elif origin is tuple and isinstance(part, int) and args:
                below.append(args[min(part, len(args) - 1)])
            elif origin is dict:
                below.append(args[1])
        current = below
    return _alternatives(current)


def _keys_at(model: type[BaseModel], parts: Sequence[Part]) -> list[str]:
    """The keys the model allows in the mapping at ``parts``."""
    return list(dict.fromkeys(key for kind in _types_at(model, parts)
                              if isinstance(kind, type) and issubclass(kind, BaseModel) for key in kind.model_fields))


def _literals_at(model: type[BaseModel], parts: Sequence[Part]) -> list[Any]:
    """The values the model allows at ``parts`` when it allows only some (``Literal``)."""
    return list(dict.fromkeys(value for kind in _types_at(model, parts) if get_origin(kind) is Literal
                              for value in get_args(kind)))


def _nodes(text: str) -> yaml.Node | None:
    """The YAML's node tree, for line numbers."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _line(node: yaml.Node | None, parts: Sequence[Part]) -> int | None:
    """The line (1-based) of ``parts`` in the YAML: of its key, or list item; for a key not there, its mapping's key."""
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            pair = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
