"""Typed settings from command-line flags and environment variables.

Each service declares one frozen dataclass; every field carries its environment variable and help
text in ``metadata``. Precedence: flag > environment variable > the field's default, so a plain
``python -m chatsvc`` runs locally with no configuration at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def setting(default: Any, env: str, help: str) -> Any:
    """A dataclass field that can be set by ``--flag`` or by the environment variable ``env``."""
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _caster(field_type: Any) -> Any:
    kind = {"int": int, "float": float, "bool": _parse_bool, "str": str}.get(str(field_type))
    if kind is None:
        raise TypeError(f"unsupported setting type {field_type!r}")
    return kind


def load(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> T:
    """Build ``cls`` from ``argv`` and ``environ`` (both default to the real process's)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        cast = _caster(f.type)
        env = f.metadata["env"]
        default = f.default
        if env in environ:
            try:
                default = cast(environ[env])
            except ValueError as exc:
                parser.error(f"environment variable {env}: {exc}")
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (env {env}; default {f.default!r})"
        parser.add_argument(flag, dest=f.name, type=cast, default=default, help=help_text)
    ns = parser.parse_args(argv)
    obj = cls(**vars(ns))
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            parser.error(str(exc))
    return obj


def parse_addr(text: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (or ``host``) to a tuple; ``[::1]:8888`` for IPv6."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    return host or "127.0.0.1", int(port)
