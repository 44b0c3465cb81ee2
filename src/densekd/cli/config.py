"""Typed command configs from a YAML file, command-line options and ``--set key=value`` overrides.

Data contracts
--------------
* A config *schema* is a dataclass. Field types may be ``str``, ``int``, ``float``, ``bool``,
  :class:`pathlib.Path`, ``Literal[...]``, ``X | None``, ``list[X]``, ``tuple[X, ...]``,
  ``dict[str, X]`` or another dataclass (a nested section, which must have a default). A field's
  ``metadata["help"]`` is its documentation; it becomes the ``--help`` text of its option.
* Precedence, lowest first: dataclass defaults < YAML file (``--config``) < command-line options
  < ``--set`` overrides (applied in the order given).
* ``--set`` values are parsed as YAML scalars (``--set k=3`` is an int, ``--set metrics=[map,mrr@10]``
  a list), except that a ``str`` field keeps the raw text, so ``--set model=007`` or ``--set tag=yes``
  stay strings. Nested keys use dots: ``--set bm25.k1=0.9``. Files and ``--set`` values share one
  YAML dialect (:mod:`densekd.cli.yaml_rules`): duplicate keys are an error and ``010`` is decimal 10,
  as ``-k 010`` is.
* Every ``float`` setting must be finite (``nan`` and ``inf`` are rejected, naming the key); ranges
  are checked by each config dataclass (``__post_init__``).
* A field's help is ``metadata["help"]``, else its entry in the ``Attributes`` section of the
  dataclass docstring (:func:`field_help`), so ``--help`` documents every setting.
* Every problem (unknown key, wrong type, missing required key, malformed YAML) raises
  :class:`~densekd.data.io.DataFormatError` naming the file (when the value came from one) and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from densekd.cli.yaml_rules import DuplicateKeyError, load_yaml
from densekd.data.io import DataFormatError, require_file

T = TypeVar("T")
_MISSING = dataclasses.MISSING
_NO_RAW = object()  # marks a value that did not come from --set text


class _Source(typing.NamedTuple):
    """Where a value came from, for error messages."""

    path: str | None  # the YAML file, or None
    label: str = ""  # e.g. "--set k=v" when there is no file

    def error(self, message: str) -> DataFormatError:
        return DataFormatError(self.path, f"{self.label}: {message}" if self.label else message)


# ---------------------------------------------------------------- types

def _hints(schema: type) -> dict[str, Any]:
    # get_type_hints resolves the string annotations that `from __future__ import annotations` leaves.
    return typing.get_type_hints(schema)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}" if args else "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, src: _Source, raw: Any = _NO_RAW) -> Any:
    """Check ``value`` against ``tp`` and convert where lossless (int -> float, str -> Path)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key, src, raw)
            except DataFormatError:
                continue
    elif origin is Literal:
        if value in args or (raw is not _NO_RAW and raw in args):
            return value if value in args else raw
    elif origin in (list, tuple) and isinstance(value, list):
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    elif origin is dict and isinstance(value, dict):
        val_tp = args[1] if args else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", src) for k, v in value.items()}
    elif tp is Any:
        return value
    elif tp in (str, Path):
        # --set text for a string field is taken literally, not as YAML (which would read "007" as 7, cut
        # "runs/exp #2" at the comment and drop a trailing space); only a quoted scalar is unquoted
        quoted = raw is not _NO_RAW and len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        if raw is not _NO_RAW and not (quoted and isinstance(value, str)):
            value = raw
        if isinstance(value, (str, Path)):  # argparse hands Path-typed options over as Path
            return tp(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads exponent numbers without a dot ("1e-4") as strings; users mean a float
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # nan slips through every range check (all comparisons are False)
                raise src.error(f"key {key!r} must be a finite number, got {value!r}")
            return number
    got = "null" if value is None else type(value).__name__
    raise src.error(f"key {key!r} must be {_type_name(tp)}, got {got} {value!r}")


def _section(tp: Any) -> type | None:
    """The dataclass of a nested section field, or None for a plain value."""
    return tp if dataclasses.is_dataclass(tp) and isinstance(tp, type) else None


# ---------------------------------------------------------------- merging sources

def _unknown(key: str, schema: type, prefix: str, src: _Source) -> DataFormatError:
    valid = ", ".join(f.name for f in dataclasses.fields(schema))
    where = f" under {prefix.rstrip('.')!r}" if prefix else ""
    return src.error(f"unknown key {prefix + key!r} (valid keys{where}: {valid})")


def _merge(values: dict[str, Any], data: dict[str, Any], schema: type, src: _Source, prefix: str = "") -> None:
    """Check ``data`` against ``schema`` and write it into ``values`` (a nested dict), in place."""
    hints = _hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    for key, value in data.items():
        if key not in names:
            raise _unknown(str(key), schema, prefix, src)
        sub = _section(hints[key])
        if sub is None:
            values[key] = _coerce(value, hints[key], prefix + key, src)
        elif isinstance(value, dict):
            _merge(values.setdefault(key, {}), value, sub, src, f"{prefix}{key}.")
        else:
            raise src.error(f"key {prefix + key!r} is a section: expected a mapping, got {value!r}")


def _apply_override(values: dict[str, Any], item: str, schema: type) -> None:
    """Apply one ``key.sub=value`` override to the nested ``values`` dict."""
    src = _Source(None, f"--set {item}")
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise src.error("expected KEY=VALUE (e.g. --set batch_size=32 or --set bm25.k1=0.9)")
    try:
        parsed = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        parsed = raw  # not YAML: fine for a string field; other types reject it below
    *parents, leaf = key.strip().split(".")
    prefix = ""
    for part in parents:  # walk down to the section that holds the leaf
        if part not in {f.name for f in dataclasses.fields(schema)}:
            raise _unknown(part, schema, prefix, src)
        sub = _section(_hints(schema)[part])
        if sub is None:
            raise src.error(f"key {prefix + part!r} is a single value, not a section")
        values, schema, prefix = values.setdefault(part, {}), sub, f"{prefix}{part}."
    if leaf not in {f.name for f in dataclasses.fields(schema)}:
        raise _unknown(leaf, schema, prefix, src)
    tp = _hints(schema)[leaf]
    if _section(tp) is not None:
        _merge(values, {leaf: parsed}, schema, src, prefix)
    else:
        values[leaf] = _coerce(parsed, tp, prefix + leaf, src, raw=raw)


def _missing_fields(schema: type, values: dict[str, Any], prefix: str = "") -> list[str]:
    missing = []
    for f in dataclasses.fields(schema):
        sub = _section(_hints(schema)[f.name])
        if sub is not None:
            missing += _missing_fields(sub, values.get(f.name, {}), f"{prefix}{f.name}.")
        elif f.name not in values and f.default is _MISSING and f.default_factory is _MISSING:
            missing.append(prefix + f.name)
    return missing


def _build(schema: type[T], values: dict[str, Any]) -> T:
    hints = _hints(schema)
    kwargs = {}
    for name, value in values.items():
        sub = _section(hints[name])
        kwargs[name] = _build(sub, value) if sub is not None else value
    return schema(**kwargs)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``); raise :class:`DataFormatError` otherwise."""
    p = require_file(path)
    try:
        data = load_yaml(p.read_text(encoding="utf-8-sig"))
    except DuplicateKeyError as e:
        raise DataFormatError(p, str(e), e.line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataFormatError(p, f"invalid YAML ({getattr(e, 'problem', None) or e})",
                              None if mark is None else mark.line + 1) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(p, f"invalid UTF-8 ({e.reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataFormatError(p, f"expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None, schema: type[T],
                flags: dict[str, Any] | None = None) -> T:
    """Build a ``schema`` instance from defaults, a YAML file, option values and ``--set`` overrides.

    Parameters
    ----------
    path
        YAML file of settings, or ``None``.
    overrides
        ``"key=value"`` / ``"section.key=value"`` strings, applied last, in order.
    schema
        The config dataclass.
    flags
        Values from command-line options (already typed by argparse); they override the file and are
        overridden by ``overrides``.

    Returns
    -------
    An instance of ``schema``.

    Raises
    ------
    DataFormatError
        Unknown key (names the file and the key), wrong type (names the key and the expected type),
        missing required key, unreadable YAML, or a ``ValueError`` from the dataclass' own checks.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     k: int = 10
    ...     tag: str = "run"
    >>> load_config(None, ["k=5", "tag=007"], Cfg)
    Cfg(k=5, tag='007')
    """
    values: dict[str, Any] = {}
    if path is not None:
        _merge(values, read_yaml(path), schema, _Source(str(path)))
    if flags:
        _merge(values, flags, schema, _Source(None, "command-line option"))
    for item in overrides or []:
        _apply_override(values, item, schema)
    missing = _missing_fields(schema, values)
    if missing:
        raise DataFormatError(path, "missing required setting(s): " + ", ".join(missing)
                              + " (give the option, --set KEY=VALUE, or put the key in the config file)")
    try:
        return _build(schema, values)
    except ValueError as e:  # the dataclass' __post_init__ checks
        raise DataFormatError(path, str(e)) from None


# ---------------------------------------------------------------- argparse bridge

def _option_kwargs(tp: Any) -> dict[str, Any]:
    """argparse keyword arguments for a field type (``X | None`` is treated as ``X``)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (list, tuple):
        return {"nargs": "+", "type": args[0] if args and args[0] in (str, int, float, Path) else str}
    return {"type": tp if tp in (str, int, float, Path) else str}


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not _MISSING:
        return "" if f.default is None else f" (default: {_show(f.default)})"
    if f.default_factory is not _MISSING:
        return f" (default: {_show(f.default_factory())})"
    return " (required)"


def add_config_arguments(parser: argparse.ArgumentParser, schema: type) -> None:
    """Add ``--config``, ``--set`` and one ``--option`` per plain top-level field of ``schema``.

    Options default to "not given" (``argparse.SUPPRESS``) so that :func:`config_from_args` can tell a
    value typed on the command line from the dataclass default and apply the precedence above.
    Nested sections get no options; they are set in the file or with ``--set section.key=value``.
    """
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the settings of this command "
                       "(keys are the option names with underscores); options given here override it")
    group.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                       help="override one setting, value parsed as YAML (e.g. --set k=10, --set bm25.k1=0.9); "
                            "repeatable, applied last")
    options = parser.add_argument_group("settings")
    for f in dataclasses.fields(schema):
        tp = _hints(schema)[f.name]
        if _section(tp) is not None or typing.get_origin(tp) is dict:
            continue
        names = f.metadata.get("flags", ("--" + f.name.replace("_", "-"),))
        options.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=f.metadata.get("metavar"),
                             help=(field_help(schema, f) + _default_text(f)).replace("%", "%%"),
                             **_option_kwargs(tp))


_ENTRY = re.compile(r"^(\w+(?:, \w+)*)\n((?:[ \t]+\S.*\n?)+)", re.MULTILINE)


def _docstring_help(schema: type) -> dict[str, str]:
    """``name -> text`` from the numpy-style ``Attributes`` section of ``schema``'s docstring.

    An entry may name several fields (``a, b, c``); they share its text.
    """
    doc = inspect.cleandoc(schema.__doc__ or "")
    _, found, section = doc.partition("Attributes\n----------\n")
    if not found:
        return {}
    out = {}
    for match in _ENTRY.finditer(section):
        text = " ".join(match.group(2).split())
        for name in match.group(1).split(", "):
            out[name] = text
    return out


def field_help(schema: type, f: dataclasses.Field | str) -> str:
    """The help text of a config field: ``metadata["help"]``, else its docstring ``Attributes`` entry."""
    f = f if isinstance(f, dataclasses.Field) else {x.name: x for x in dataclasses.fields(schema)}[f]
    return f.metadata.get("help") or _docstring_help(schema).get(f.name, "")


def settings_help(schema: type, prefix: str = "", top_level: bool = False) -> str:
    """Text lines documenting nested-section keys (which have no option), for an ``--help`` epilog.

    ``top_level`` also lists the plain top-level keys (for commands that take only a config file).
    """
    lines = []
    for f in dataclasses.fields(schema):
        sub = _section(_hints(schema)[f.name])
        if sub is not None:
            lines.append(settings_help(sub, f"{prefix}{f.name}."))
        elif prefix or top_level:
            lines.append(f"  {prefix}{f.name}: {field_help(schema, f)}{_default_text(f)}")
    return "\n".join(line for line in lines if line)


def config_from_args(args: argparse.Namespace, schema: type[T]) -> T:
    """The ``schema`` instance for parsed arguments: ``--config`` < options < ``--set``."""
    names = {f.name for f in dataclasses.fields(schema)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []), schema, flags)
