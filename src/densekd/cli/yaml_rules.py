"""The YAML dialect of densekd configs: safe YAML with two surprises of YAML 1.1 removed.

Contracts
---------
* A key given twice in one mapping is an error naming the file and the line of the second one
  (PyYAML silently keeps the last, so a forgotten line at the top of a file would be ignored).
* Integers written in decimal digits are decimal even with leading zeros: ``010`` is 10, as
  ``int("010")`` (argparse, ``-k 010``) reads it, so ``--set k=010`` and ``-k 010`` agree. YAML 1.1
  reads ``010`` as octal 8. ``0x10`` / ``0o10`` / ``0b10`` keep their explicit bases, and a
  sexagesimal ``1:30`` stays the string ``"1:30"`` instead of becoming 90.
* Config files and ``--set`` values are read by the same :class:`ConfigLoader`; a byte-order mark at
  the start of a file is dropped.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["ConfigLoader", "DuplicateKeyError", "load_yaml"]

_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+")


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice; ``line`` is 1-based."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"key {key!r} given twice (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys and reads leading-zero integers as decimal."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key])
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        text = str(self.construct_scalar(node))
        if _DECIMAL.fullmatch(text):
            return int(text.replace("_", ""))
        if _SEXAGESIMAL.fullmatch(text):
            return text  # "1:30" is a time or a ratio to a user, never the number 90
        return super().construct_yaml_int(node)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """Parse ``text`` with :class:`ConfigLoader` (raises ``yaml.YAMLError``, incl. :class:`DuplicateKeyError`).

    Examples
    --------
    >>> load_yaml("k: 010\\nt: 0x10\\nm: [map, 007]")
    {'k': 10, 't': 16, 'm': ['map', 7]}
    """
    return yaml.load(text, Loader=ConfigLoader)  # ConfigLoader is a SafeLoader: no arbitrary objects
