"""Reading a config dataclass from a component's config.json."""

from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict, ignore_unknown: bool) -> T:
    """`cls` built from the fields of `d` it declares; any other key is an error unless
    `ignore_unknown` (checkpoints from elsewhere carry training-only fields)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown and not ignore_unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**{k: v for k, v in d.items() if k in known})
