"""Reading the YAML job file: the document, the line of each job, syntax errors by line."""

from __future__ import annotations

from pathlib import Path

import yaml

from ._base import Issues

__all__ = ["read_yaml"]

# The C loader when PyYAML was built with libyaml; same behaviour, faster on big files.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path, display: str, issues: Issues) -> tuple[object, list[int]]:
    """The job file's document and the 1-based line of each item of its ``jobs`` list.

    Unreadable files, syntax errors and duplicate keys become issues (the
    document is then None): PyYAML would otherwise keep the last of two
    equal keys silently.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        issues.add(display, "", f"job file not found: {path}")
        return None, []
    except UnicodeDecodeError as exc:
        issues.add(display, "", f"not UTF-8 text (bad byte at offset {exc.start})")
        return None, []
    except OSError as exc:
        issues.add(display, "", f"cannot read the job file: {exc.strerror or exc}")
        return None, []

    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        before = issues.total
        _check_duplicate_keys(node, "", display, issues)
        if issues.total > before:
            return None, []
        data: object = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display} line {mark.line + 1}, column {mark.column + 1}" if mark else display
        problem = exc.problem or exc.context or "invalid YAML"
        issues.add(where, "", f"YAML syntax error: {problem}")
        return None, []
    except yaml.YAMLError as exc:
        issues.add(display, "", f"YAML error: {exc}")
        return None, []
    finally:
        loader.dispose()
    return data, _job_lines(node)


def _check_duplicate_keys(node: yaml.Node, path: str, display: str, issues: Issues) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            dotted = f"{path}.{key}" if path else key
            if key in seen and key != "<<":
                issues.add(
                    f"{display} line {line}",
                    dotted,
                    f"duplicate key (first given on line {seen[key]})",
                )
            seen.setdefault(key, line)
            _check_duplicate_keys(value_node, dotted, display, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{path}[{i}]", display, issues)


def _job_lines(root: yaml.Node) -> list[int]:
    if not isinstance(root, yaml.MappingNode):
        return []
    for key_node, value_node in root.value:
        if key_node.value == "jobs" and isinstance(value_node, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value_node.value]
    return []
