"""Reading a composed YAML tree so that every error names its file, line and key path."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Mapping

import yaml
from yaml.constructor import SafeConstructor

from edgebell.config.model import split_url
from edgebell.durations import parse_duration
from edgebell.errors import ConfigError

_TAG = "tag:yaml.org,2002:"
NULL, STR, INT, FLOAT, BOOL = (_TAG + name for name in ("null", "str", "int", "float", "bool"))
# Tags a plain scalar resolves to on its own; an explicit !!binary or !custom is refused.
_SCALAR_TAGS = frozenset({NULL, STR, INT, FLOAT, BOOL, _TAG + "timestamp"})
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")


def key_path(parent: str, name: str) -> str:
    """``parent.name``, or ``name`` at the top."""
    return f"{parent}.{name}" if parent else name


# libyaml's parser (in PyYAML's wheels) is ten times faster than the pure-Python one: it
# matters for `edgebell status`, which reads the config to find the socket.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose(text: str, file: str) -> yaml.Node | None:
    """The YAML node tree of ``text`` (None if it holds no document); syntax errors located."""
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        # str(exc) quotes the offending source line, which may hold a device token.
        message = "; ".join(part for part in (exc.problem, exc.context) if part)
        raise ConfigError(f"YAML syntax error: {message}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        # PyYAML gives the character's code (an int) for text input, the byte for bytes.
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(
            f"YAML syntax error: character #x{code:04x} is not allowed",
            file=file,
            line=line,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {type(exc).__name__}", file=file) from None
    except RecursionError:
        # PyYAML's pure-Python composer recurses per level (libyaml stops at 1000 levels).
        raise ConfigError(
            "YAML nested too deeply (no edgebell setting is more than a few levels deep)",
            file=file,
        ) from None


class Document:
    """One config file being read: locates errors and remembers the line of each key path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self._constructor = SafeConstructor()

    def error(self, node: yaml.Node | None, key: str | None, message: str) -> ConfigError:
        """A ConfigError at ``node``'s line (or the file) for ``key``."""
        line = None if node is None else node.start_mark.line + 1
        return ConfigError(message, file=self.file, line=line, key=key or None)

    def mapping(self, node: yaml.Node, key: str, allowed: Collection[str]) -> Fields:
        """The fields of a mapping that may hold only ``allowed`` keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"must be a mapping, not {describe(node)}")
        return Fields(self, node, key, allowed)

    def sequence(self, node: yaml.Node | None, key: str) -> Iterator[tuple[str, yaml.Node]]:
        """``(key path, item)`` for each item of a list; an empty value is an empty list."""
        if node is None:
            return
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, f"must be a list, not {describe(node)}")
        for index, item in enumerate(node.value):
            path = f"{key}[{index}]"
            self.lines[path] = item.start_mark.line + 1
            yield path, item

    def text(self, node: yaml.Node, key: str) -> str:
        """A string exactly as written: ``0123`` stays ``0123``, ``yes`` stays ``yes``."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == NULL:
            raise self.error(node, key, f"must be a string, not {describe(node)}")
        self._check_tag(node, key)
        value: str = node.value
        if not value.strip():
            raise self.error(node, key, "must not be empty")
        return value

    def url(self, node: yaml.Node, key: str, ports: Mapping[str, int], expected: str) -> str:
        """A checked ``scheme://host[:port]`` (``ports``: scheme -> default port), as written."""
        value = self.text(node, key)
        try:
            split_url(value, ports)
        except ValueError as exc:
            raise self.error(node, key, f"{exc} (expected {expected})") from None
        return value

    def integer(self, node: yaml.Node, key: str) -> int:
        """A whole number (``true`` is not one)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != INT:
            raise self.error(node, key, f"must be a whole number, not {describe(node)}")
        value = self._constructor.construct_object(node)
        assert isinstance(value, int)
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        """``true`` or ``false`` (YAML 1.1's yes/no/on/off too, as PyYAML reads them)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != BOOL:
            raise self.error(node, key, f"must be true or false, not {describe(node)}")
        return bool(self._constructor.construct_object(node))

    def duration(self, node: yaml.Node, key: str) -> float:
        """Seconds: a number, or a string like ``1.5s``, ``10m``, ``1m30s``."""
        if isinstance(node, yaml.ScalarNode) and node.tag in (INT, FLOAT):
            raw: str | float = self._constructor.construct_object(node)
        elif isinstance(node, yaml.ScalarNode) and node.tag == STR:
            raw = node.value
        else:
            raise self.error(
                node, key, f"must be a duration like 1.5s or 10m, not {describe(node)}"
            )
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise self.error(node, key, str(exc)) from None

    def choice(self, node: yaml.Node, key: str, choices: Collection[str]) -> str:
        """One of ``choices`` (compared case-insensitively, returned lowercase)."""
        options = ", ".join(choices)
        if not isinstance(node, yaml.ScalarNode) or node.tag == NULL:
            raise self.error(node, key, f"must be one of {options}, not {describe(node)}")
        value = str(node.value).strip().lower()
        if value not in choices:
            raise self.error(node, key, f"must be one of {options}, not {node.value!r}")
        return value

    def match_value(self, node: yaml.Node, key: str) -> str | int:
        """A button ``match:`` value: plain decimals are numbers, anything else text as written.

        YAML 1.1 would read ``04`` as octal and ``0f7499`` as text; receivers print
        both as they are, so only an unambiguous decimal becomes an int.
        """
        text = self.text(node, key)
        if node.tag == INT and _DECIMAL.fullmatch(text):
            return int(text)
        return text

    def _check_tag(self, node: yaml.ScalarNode, key: str) -> None:
        if node.tag not in _SCALAR_TAGS:
            raise self.error(node, key, f"unsupported YAML tag {node.tag}")


class Fields:
    """The keys of one YAML mapping, checked against the allowed ones on creation."""

    def __init__(
        self, doc: Document, node: yaml.MappingNode, path: str, allowed: Collection[str]
    ) -> None:
        self.doc = doc
        self.node = node
        self.path = path
        self.entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            name = self._name(key_node)
            if name in self.entries:
                first = self.entries[name][0].start_mark.line + 1
                raise doc.error(key_node, self.key(name), f"duplicate key (first at line {first})")
            self.entries[name] = (key_node, value_node)
        for name, (key_node, _) in self.entries.items():
            if name not in allowed:
                raise doc.error(key_node, self.key(name), _unknown(name, allowed))

    def _name(self, key_node: yaml.Node) -> str:
        if key_node.tag == _TAG + "merge":
            raise self.doc.error(key_node, self.path, "merge keys (<<) are not supported")
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == NULL:
            raise self.doc.error(
                key_node, self.path, f"a key must be a name, not {describe(key_node)}"
            )
        return str(key_node.value)

    def key(self, name: str) -> str:
        """The key path of field ``name``."""
        return key_path(self.path, name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> yaml.Node | None:
        """The value of ``name``; None when it is absent or empty (``null``, ``~``, nothing)."""
        if name not in self.entries:
            return None
        key_node, value = self.entries[name]
        self.doc.lines[self.key(name)] = key_node.start_mark.line + 1
        if isinstance(value, yaml.ScalarNode) and value.tag == NULL:
            return None
        return value

    def require(self, name: str) -> yaml.Node:
        """The value of ``name``; missing is an error at the mapping's line, empty at its own."""
        if name not in self.entries:
            raise self.doc.error(self.node, self.key(name), "required")
        value = self.get(name)
        if value is None:
            raise self.doc.error(self.entries[name][1], self.key(name), "required, but empty")
        return value

    def key_node(self, name: str) -> yaml.Node:
        """The node of the key ``name`` itself (for errors about the key, not its value)."""
        return self.entries[name][0]


def _unknown(name: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key (expected one of: {', '.join(sorted(allowed))})"


def describe(node: yaml.Node) -> str:
    """What a node is, for "must be X, not Y" messages (never its full text)."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        NULL: "empty",
        STR: "text",
        INT: "a number",
        FLOAT: "a fractional number",
        BOOL: "true/false",
        _TAG + "timestamp": "a date",
    }.get(node.tag, f"a {node.tag} value")
