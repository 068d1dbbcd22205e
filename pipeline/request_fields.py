"""How a request field is spelled outside Python: its CLI flag and help, and how its text parses.

`GenerationRequest` (pipeline/request.py) declares each field once, with `param(...)`; the HTTP
body (server/api/schemas.py's `CreateVideo`), the `paris generate` / `paris submit` flags
(pipeline/cli.py) and the client's form (client/submit.py) are derived from `request_fields`, so a
new field is written in one place. The first type a field's annotation names is the one the body
and the flags take: `routing: RoutingMode | str | None` takes a RoutingMode; Python callers may also
pass its value as a str.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

_KEY = "request_field"


@dataclass(frozen=True)
class Param:
    """How one field is exposed (what its name and type do not say)."""

    flag: str | None = None  # the CLI's spelling; default --name-with-dashes; without dashes: positional
    help: str | None = None
    listed: str | None = None  # a list's comma-separated text: what it must be, for "<name> must be <listed>"
    file: bool = False  # a file (a CLI path, an upload), not a body field: the first frame


def param(*, required: bool = False, flag: str | None = None, help: str | None = None, listed: str | None = None,
          file: bool = False) -> Any:
    """A request field's declaration (`dataclasses.field`, default None unless required)."""
    metadata = {_KEY: Param(flag, help, listed, file)}
    return dataclasses.field(metadata=metadata) if required else dataclasses.field(default=None, metadata=metadata)


@dataclass(frozen=True)
class RequestField:
    name: str
    type: Any  # what the body and the flags take: int, float, bool, str, an enum, list[int], ...
    required: bool
    flag: str
    help: str | None
    listed: str | None
    file: bool

    @property
    def body_type(self) -> Any:
        """The field's annotation in the HTTP body (None: the model's default)."""
        return self.type if self.required else self.type | None

    def parse(self, text: str) -> list:
        """A list field's comma-separated text ("0,2,1"; spaces and empty items ignored) as its items;
        ValueError naming the field."""
        (item,) = typing.get_args(self.type)
        try:
            return [item(x) for x in text.replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise ValueError(f"{self.name} must be {self.listed}") from None


def request_fields(cls: type) -> tuple[RequestField, ...]:
    """The fields of a dataclass declared with `param`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        p: Param = f.metadata[_KEY]
        out.append(RequestField(
            name=f.name, type=_first_type(hints[f.name]), required=f.default is dataclasses.MISSING,
            flag=p.flag or "--" + f.name.replace("_", "-"), help=p.help, listed=p.listed, file=p.file))
    return tuple(out)


def _first_type(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)[0]
    return annotation


def takes_numbers(annotation: Any) -> bool:
    """Whether a field holds numbers (or a list of them): true or false must not pass for 1 or 0."""
    t = _first_type(annotation)
    if typing.get_origin(t) is list:
        (t,) = typing.get_args(t)
    return t in (int, float)


def choices(t: Any) -> list[str] | None:
    """An enum field's values (the flag's choices); None for other types."""
    return [m.value for m in t] if isinstance(t, type) and issubclass(t, enum.Enum) else None
