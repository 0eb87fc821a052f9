"""YAML for recipes: a loader refusing aliases, anchors and repeated keys, and a dumper writing no aliases."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError
from ..utils.validation import short_repr

MAX_CONFIG_BYTES = 1 << 20
"""Largest recipe file read (recipes are a few hundred bytes)."""


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing aliases and anchors, and duplicate keys (which YAML lets the last win).

    Ten lines of nested aliases ("billion laughs") expand to gigabytes; recipes share values through
    ``_base_`` instead.
    """

    source = "the config"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise ConfigError(f"{self.source}, line {event.start_mark.line + 1}: YAML anchors and aliases "
                              f"({sign}{str(event.anchor)[:40]}) are not allowed in splitattn configs; write "
                              "the value out (recipes share keys through _base_)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": the base class merges it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(f"{self.source}: key {short_repr(key, 200)} is given twice (lines {first} "
                                  f"and {line}); keep one")
            lines[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed by :class:`_RecipeLoader`; ``source`` ("config file x.yaml") names it in errors."""
    loader = _RecipeLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(e).split())[:300]}") from e
    except RecursionError:
        raise ConfigError(f"{source}: its YAML is nested too deeply to read") from None
    except ValueError as e:  # e.g. an int over Python's 4300-digit limit
        raise ConfigError(f"{source}: a value YAML cannot convert ({str(e)[:150]})") from e
    finally:
        loader.dispose()


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value shared by two keys twice: a saved config must load without aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

def dump_yaml(data: Any) -> str:
    """``data`` as YAML, keys in their order, a value shared by two keys written twice."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


__all__ = ["MAX_CONFIG_BYTES", "dump_yaml", "load_yaml"]
