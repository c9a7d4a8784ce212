"""YAML into dataclasses, with every error named by file, line and key.

Shared by the agent and the collector (stdlib + pyyaml only). The schema is the
dataclass itself: field types say what is allowed, field defaults are the named
defaults, and ``field(metadata=...)`` adds range and pattern checks:

    interval: float = field(default=10.0, metadata=check(min=0.1, max=3600))

Loading collects *all* errors instead of stopping at the first, so an operator
fixing a config the morning of an event sees everything at once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml when pyyaml has it: the same nodes and line marks, ~10x faster (10,000 probes: ~20 s -> ~2 s)."""


@dataclasses.dataclass(frozen=True)
class ConfigError:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigErrors(Exception):
    """Raised with every problem found in one config file."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def print(self) -> int:
        """Every error on stderr, then the count; returns the exit code for a bad config (2)."""
        for err in self.errors:
            print(err, file=sys.stderr)
        print(f"{len(self.errors)} error(s)", file=sys.stderr)
        return 2


def check(
    *,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    nonempty: bool = False,
    validate: Callable[[Any], str | None] | None = None,
    doc: str = "",
) -> dict[str, Any]:
    """Field metadata: numeric bounds, a regex for strings, or a custom validator."""
    return {
        "min": min,
        "max": max,
        "pattern": pattern,
        "nonempty": nonempty,
        "validate": validate,
        "doc": doc,
    }


class _Loader:
    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []

    def err(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(ConfigError(self.file, line, key, message))

    # -- scalars ---------------------------------------------------------
    def scalar(self, node: yaml.Node, key: str, tp: Any) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, key, f"expected {_type_name(tp)}, got a {_node_kind(node)}")
            return _INVALID
        value = _construct(node)
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(float(value)):
                    self.err(node, key, "must be a finite number")
                    return _INVALID
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool) and node.style is None:
                # an unquoted number where text is wanted (e.g. a port in host:port
                # is fine, but a bare `name: 123` almost always wants quotes)
                return str(node.value)
        elif get_origin(tp) is Literal:
            choices = get_args(tp)
            if value in choices:
                return value
            self.err(node, key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
            return _INVALID
        elif tp is Any:
            return value
        self.err(node, key, f"expected {_type_name(tp)}, got {value!r}")
        return _INVALID

    # -- any type ---------------------------------------------------------
    def value(self, node: yaml.Node, key: str, tp: Any) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                if len(args) < len(get_args(tp)):
                    return None
                self.err(node, key, "must not be empty")
                return _INVALID
            if len(args) == 1:
                return self.value(node, key, args[0])
            # try each member quietly, report against the first
            for a in args:
                sub = _Loader(self.file)
                v = sub.value(node, key, a)
                if not sub.errors:
                    return v
            return self.value(node, key, args[0])
        if origin is list:
            (item_tp,) = get_args(tp)
            if not isinstance(node, yaml.SequenceNode):
                self.err(node, key, f"expected a list, got a {_node_kind(node)}")
                return _INVALID
            out = []
            for i, item in enumerate(node.value):
                v = self.value(item, f"{key}[{i}]", item_tp)
                if v is not _INVALID:
                    out.append(v)
            return out
        if origin is dict:
            ktp, vtp = get_args(tp)
            if not isinstance(node, yaml.MappingNode):
                self.err(node, key, f"expected a mapping, got a {_node_kind(node)}")
                return _INVALID
            out_d: dict[Any, Any] = {}
            for knode, vnode in node.value:
                k = self.scalar(knode, key, ktp)
                if k is _INVALID:
                    continue
                if k in out_d:
                    self.err(knode, f"{key}.{k}", "duplicate key")
                    continue
                v = self.value(vnode, f"{key}.{k}" if key else str(k), vtp)
                if v is not _INVALID:
                    out_d[k] = v
            return out_d
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(node, key, tp)
        return self.scalar(node, key, tp)

    def dataclass(self, node: yaml.Node, key: str, cls: type[T]) -> T | Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            self.err(node, key, f"expected a mapping, got a {_node_kind(node)}")
            return _INVALID
        hints = _hints(typing.cast(Any, cls))
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        seen: set[str] = set()
        ok = True
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else str(knode)
            sub = f"{key}.{name}" if key else str(name)
            if name in seen:
                self.err(knode, sub, "duplicate key")
                ok = False
                continue
            seen.add(name)
            f = fields.get(name)
            if f is None:
                known = ", ".join(sorted(fields))
                self.err(knode, sub, f"unknown key (known keys: {known})")
                ok = False
                continue
            before = len(self.errors)
            v = self.value(vnode, sub, hints[name])
            if v is _INVALID or len(self.errors) > before:
                ok = False
                continue
            msg = _check_meta(v, f.metadata)
            if msg:
                self.err(vnode, sub, msg)
                ok = False
                continue
            kwargs[name] = v
        for name, f in fields.items():
            if (
                name not in kwargs
                and name not in seen
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                self.err(node, f"{key}.{name}" if key else name, "required key is missing")
                ok = False
        if not ok:
            return _INVALID
        try:
            obj = cls(**kwargs)
        except (TypeError, ValueError) as e:
            self.err(node, key, str(e))
            return _INVALID
        post = getattr(obj, "validate", None)
        if callable(post):
            for field_name, msg in post():
                target = _find_child(node, field_name)
                self.err(target, f"{key}.{field_name}" if key else field_name, msg)
        return obj


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError:
        if _YAML_LOADER is yaml.SafeLoader:
            raise
    return yaml.compose(text, Loader=yaml.SafeLoader)  # raises again, in pyyaml's clearer words


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    """A dataclass's field types, evaluated once per class (10,000 probes: 120,000 evals otherwise)."""
    return typing.get_type_hints(cls)


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _construct(node: yaml.ScalarNode) -> Any:
    """A scalar's value as yaml.safe_load gives it (its tag was resolved when the text was composed)."""
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    finally:
        _CONSTRUCTOR.constructed_objects.clear()


def _find_child(node: yaml.Node, name: str) -> yaml.Node:
    """The node of a dotted key below ``node`` (for cross-field errors), else node itself."""
    first, _, rest = name.partition(".")
    first = first.split("[")[0]
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == first:
                return _find_child(v, rest) if rest else k
    return node


def _check_meta(v: Any, meta: Any) -> str | None:
    if not meta:
        return None
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(v, int | float) and not isinstance(v, bool):
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
    if isinstance(v, str | list | dict) and meta.get("nonempty") and not v:
        return "must not be empty"
    pat = meta.get("pattern")
    if pat and isinstance(v, str) and not re.fullmatch(pat, v):
        return f"{v!r} does not match {pat}"
    validate = meta.get("validate")
    if validate is not None:
        msg: str | None = validate(v)
        return msg
    return None


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "scalar"


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def load_text(text: str, cls: type[T], file: str = "<config>") -> T:
    """Parse YAML text into ``cls``; raise ConfigErrors listing every problem."""
    loader = _Loader(file)
    try:
        node = _compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigErrors([ConfigError(file, line, "", f"invalid YAML: {problem}")]) from None
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(file, 0, 0, 0, "", 0), None)
    obj = loader.dataclass(node, "", cls)
    if loader.errors:
        raise ConfigErrors(sorted(loader.errors, key=lambda e: e.line))
    assert obj is not _INVALID
    return typing.cast(T, obj)


def load_file(path: str | Path, cls: type[T]) -> T:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigErrors([ConfigError(str(p), 0, "", f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise ConfigErrors([ConfigError(str(p), 0, "", f"not UTF-8 text: {e}")]) from None
    return load_text(text, cls, str(p))
