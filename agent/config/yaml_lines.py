"""Load YAML safely while remembering the line of every key, so problems can point into the file.

PyYAML drops positions once it builds Python objects and silently keeps the last of two
duplicate keys; walking the node tree first gives both the line map and a duplicate-key error.
"""

from __future__ import annotations

import yaml

from agent.config.problems import ConfigError, Problem, join_path


def load_yaml_text(text: str, source: str = "<config>") -> tuple[dict, dict[str, int]]:
    """Parse YAML safely and remember the line of every key, so problems can point into the file."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[str, int] = {}
        duplicates: list[Problem] = []
        _walk_node(node, "", lines, duplicates, set())
        if duplicates:
            raise ConfigError(duplicates)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = exc.problem or exc.context or "syntax error"
        raise ConfigError([Problem("", f"invalid YAML in {source}: {reason}", line=line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"invalid YAML in {source}: {exc}")]) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        problem = Problem("", f"{source}: top level must be a mapping of keys", line=node.start_mark.line + 1)
        raise ConfigError([problem])
    return data, lines


def _walk_node(node: yaml.Node, path: str, lines: dict[str, int], problems: list[Problem], stack: set[int]) -> None:
    """Record key lines and refuse duplicate keys (PyYAML would silently keep the last one)."""
    if id(node) in stack:  # a recursive alias: nothing new below
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            child = join_path(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                problems.append(Problem(child, "duplicate key", line=line))
                continue
            seen.add(key_node.value)
            lines[child] = line
            _walk_node(value_node, child, lines, problems, stack)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _walk_node(item, child, lines, problems, stack)
    stack.discard(id(node))
