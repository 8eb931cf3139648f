"""Specs are data: plain values only, from the YAML text to the run notebook.

A sweep spec is read into plain data and nothing else: strings, integers, finite floats, booleans, null,
and lists and mappings (with string keys) of them. Every other YAML tag (``!!binary``, ``!!set``,
``!!python/...``, a timestamp such as an unquoted ``2024-01-01``, a merge key) and every duplicate key is
refused with its key path. ``check_plain`` holds the same rule for values built in Python, and the run
notebook receives only values that pass it, so the parameters it is given are data that round-trips through
JSON exactly, never code a value could break out of.
"""

from __future__ import annotations

import math
from pathlib import PurePath

import yaml
from .errors import NotPlainData

_SCALARS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}
_SEQUENCE, _MAPPING = "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
PLAIN = "plain data (strings, numbers, true/false, null, lists and mappings with string keys)"


def _key_path(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def load_yaml(text: str, where: str):
    """The plain data of one YAML document ``text`` (``where`` names it in errors); ``NotPlainData`` for any other
    tag or a duplicate key, naming the key path, and for text that is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct(loader, node, "", where)
    except yaml.YAMLError as error:
        raise NotPlainData(f"{where}: not valid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise NotPlainData(f"{where}: nested too deeply, or an alias that contains itself; a spec is plain data "
                           "a few levels deep") from None
    finally:
        loader.dispose()


def _construct(loader, node, path: str, where: str):
    place = f"key '{path}'" if path else "the document"
    if isinstance(node, yaml.ScalarNode) and node.tag in _SCALARS:
        return check_plain(loader.construct_object(node, deep=True), where, path)
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQUENCE:
        return [_construct(loader, child, f"{path}[{index}]", where) for index, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode) and node.tag == _MAPPING:
        mapping = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"):
                raise NotPlainData(f"{where}: {place} has a key {key_node.value!r} of YAML type {key_node.tag!r}; "
                                   f"keys are strings")
            key = key_node.value
            if key in mapping:
                raise NotPlainData(f"{where}: key '{_key_path(path, key)}' appears twice (line "
                                   f"{key_node.start_mark.line + 1}); a spec names each key once")
            mapping[key] = _construct(loader, value_node, _key_path(path, key), where)
        return mapping
    shown = node.value if isinstance(node, yaml.ScalarNode) else f"a {type(node).__name__[:-4].lower()}"
    raise NotPlainData(f"{where}: {place} holds {str(shown)[:60]!r} of YAML type {node.tag!r}; a spec holds "
                       f"{PLAIN} (quote a date or any text that YAML reads as something else)")


def check_plain(value, where: str, path: str = ""):
    """``value`` if it is plain data that JSON represents exactly (tuples become lists, paths their text); else
    ``NotPlainData`` naming ``where`` and the key path."""
    place = f"key '{path}'" if path else "the value"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotPlainData(f"{where}: {place} is {value!r}; expected a finite number")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [check_plain(item, where, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotPlainData(f"{where}: {place} has a key {key!r} of type {type(key).__name__}; keys are "
                                   "strings")
            out[key] = check_plain(item, where, _key_path(path, key))
        return out
    raise NotPlainData(f"{where}: {place} holds a {type(value).__name__} ({str(value)[:60]!r}); expected {PLAIN}")
