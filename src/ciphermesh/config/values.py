"""The values tree: Helm `--set` syntax and YAML files, checked against the schema."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ciphermesh.config.schema import BY_PATH, Kind, Setting

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_INDEXED = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<index>\d+)\]$")
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
# A values file is a few hundred bytes; YAML takes about a second per MB, so a big file is a mistake.
MAX_VALUES_FILE_BYTES = 1 << 20


class ValuesError(ValueError):
    """A value that is unknown or does not fit its setting; the message names the setting."""


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `5m`, `1h30m` or `250ms` (`0` alone is allowed)."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration (examples: 5m, 90s, 1h30m)")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("empty duration")
    return total


def parse_bool(text: str) -> bool:
    """`true` or `false` (also capitalised or upper case), or ValueError."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


def _convert(setting: Setting, raw: object) -> object:
    """The typed value of `raw` for `setting`, or ValueError saying why not."""
    if setting.kind is Kind.CIDR_LIST:
        items = list(raw) if isinstance(raw, list | tuple) else [raw]
        if not items:
            raise ValueError("the list is empty")
        return tuple(str(_cidr(str(item))) for item in items)
    if isinstance(raw, list | tuple | dict):
        raise ValueError(f"expected a single {setting.kind.value}, got a {type(raw).__name__}")
    text = raw if isinstance(raw, str) else _yaml_scalar_text(raw)
    if setting.kind is Kind.BOOL:
        return parse_bool(text)
    if setting.kind is Kind.INT:
        try:
            number = int(text, 10)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if setting.minimum is not None and number < setting.minimum:
            raise ValueError(f"{number} is below the minimum {setting.minimum}")
        if setting.maximum is not None and number > setting.maximum:
            raise ValueError(f"{number} is above the maximum {setting.maximum}")
        return number
    if setting.kind is Kind.CHOICE:
        if text not in setting.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(setting.choices)}")
        return text
    if setting.kind is Kind.DURATION:
        parse_duration(text)
        return text
    if setting.kind is Kind.CIDR:
        if text == "" and setting.allow_empty:
            return ""
        return str(_cidr(text))
    if text == "" and not setting.allow_empty:
        raise ValueError("must not be empty")
    return text


def _yaml_scalar_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if raw is None:
        return ""
    return str(raw)


def _cidr(text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR ({exc})") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{text!r} is not an IPv4 CIDR (IPv6 pools are not supported yet)")
    return network


def _split_assignments(expr: str) -> list[str]:
    """Split a `--set` argument on top-level commas; `{a,b}` lists and `\\,` keep theirs."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    chars = iter(expr)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _setting(path: str) -> Setting:
    try:
        return BY_PATH[path]
    except KeyError:
        raise ValuesError(f"{path}: unknown setting") from None


@dataclass(frozen=True)
class Values:
    """Validated settings by path; anything not set has the schema's default."""

    _set: Mapping[str, object] = field(default_factory=dict)

    def get(self, path: str) -> object:
        if path in self._set:
            return self._set[path]
        return _setting(path).default

    def flag(self, path: str) -> bool:
        value = self.get(path)
        assert isinstance(value, bool), path
        return value

    def number(self, path: str) -> int:
        value = self.get(path)
        assert isinstance(value, int) and not isinstance(value, bool), path
        return value

    def text(self, path: str) -> str:
        value = self.get(path)
        assert isinstance(value, str), path
        return value

    def seconds(self, path: str) -> float:
        return parse_duration(self.text(path))

    def cidrs(self, path: str) -> tuple[ipaddress.IPv4Network, ...]:
        value = self.get(path)
        assert isinstance(value, tuple), path
        return tuple(ipaddress.IPv4Network(item) for item in value)

    def overridden(self) -> dict[str, object]:
        """The settings given explicitly (by `--set` or a file), by path."""
        return dict(self._set)

    def with_value(self, path: str, raw: object) -> Values:
        setting = _setting(path)
        try:
            value = _convert(setting, raw)
        except ValueError as exc:
            raise ValuesError(f"{path}: {exc}") from None
        return Values({**self._set, path: value})

    def with_set(self, expr: str) -> Values:
        """Apply one Helm `--set` argument: `a.b=c`, several joined by commas, `a={x,y}`, `a[0]=x`."""
        values = self
        for assignment in _split_assignments(expr):
            key, sep, raw = assignment.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValuesError(f"{assignment!r}: expected KEY=VALUE")
            indexed = _INDEXED.match(key)
            if indexed:
                values = values._with_index(indexed["path"], int(indexed["index"]), raw)
            elif raw.startswith("{") and raw.endswith("}"):
                inner = raw[1:-1]
                values = values.with_value(key, [item for item in inner.split(",") if item] if inner else [])
            else:
                values = values.with_value(key, raw)
        return values

    def _with_index(self, path: str, index: int, raw: str) -> Values:
        setting = _setting(path)
        if setting.kind is not Kind.CIDR_LIST:
            raise ValuesError(f"{path}[{index}]: {path} is not a list")
        existing = self._set.get(path)
        current: list[object] = list(existing) if isinstance(existing, tuple) else []
        if index > len(current):
            raise ValuesError(f"{path}[{index}]: index leaves a gap (the list has {len(current)} items)")
        current[index:index + 1] = [raw]
        return self.with_value(path, current)

    def with_mapping(self, tree: Mapping[str, Any], source: str = "values") -> Values:
        """Apply a nested mapping as a YAML values file holds it."""
        values = self
        for path, raw in _flatten(tree):
            try:
                values = values.with_value(path, raw)
            except ValuesError as exc:
                raise ValuesError(f"{source}: {exc}") from None
        return values

    def with_file(self, path: str) -> Values:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_VALUES_FILE_BYTES + 1)
        except OSError as exc:
            raise ValuesError(f"{path}: cannot read ({exc.strerror})") from None
        if len(data) > MAX_VALUES_FILE_BYTES:
            raise ValuesError(f"{path}: larger than {MAX_VALUES_FILE_BYTES >> 20} MiB, the most a values "
                              "file may be")
        try:
            tree = yaml.safe_load(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValuesError(f"{path}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise ValuesError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if tree is None:
            return self
        if not isinstance(tree, dict):
            raise ValuesError(f"{path}: the top level must be a mapping")
        return self.with_mapping(tree, source=path)

    def as_tree(self) -> dict[str, Any]:
        """Every setting, nested as in a values file (lists as lists)."""
        tree: dict[str, Any] = {}
        for path in BY_PATH:
            value = self.get(path)
            node = tree
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = list(value) if isinstance(value, tuple) else value
        return tree


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in BY_PATH:
            yield from _flatten(value, prefix=f"{path}.")
        else:
            yield path, value


def load_values(files: Iterable[str] = (), sets: Iterable[str] = (), base: Values | None = None) -> Values:
    """`base` (default: the defaults), then each `-f` file in order, then each `--set` in order (Helm's
    precedence)."""
    values = Values() if base is None else base
    for path in files:
        values = values.with_file(path)
    for expr in sets:
        values = values.with_set(expr)
    return values
