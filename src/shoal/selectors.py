"""Label and field selectors, in the Kubernetes syntax.

Label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, joined by commas.
Field selectors: `path=value`, `path==value`, `path!=value` over dotted paths of the object.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.errors import BadRequest
from shoal.model.meta import LABEL_VALUE as _LABEL_VALUE
from shoal.model.meta import check_label_key

Predicate = Callable[[dict[str, Any]], bool]

_SET_EXPR = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # =, !=, in, notin, exists, !exists
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def _label_key(key: str, selector: str) -> str:
    try:
        return check_label_key(key)
    except ValueError as error:
        raise BadRequest(f"labelSelector {selector!r}: {error}", field="labelSelector") from None


def _label_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise BadRequest(
            f"labelSelector {selector!r}: {value!r} is not a label value "
            "(at most 63 letters, digits, '-', '_' or '.')",
            field="labelSelector",
        )
    return value


def parse_label_selector(selector: str) -> list[Requirement]:
    requirements = []
    for part in _split_top_level(selector):
        if match := _SET_EXPR.match(part):
            key, operator, values = match.groups()
            items = frozenset(
                _label_value(v.strip(), selector) for v in values.split(",") if v.strip()
            )
            requirements.append(Requirement(_label_key(key, selector), operator, items))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            requirements.append(
                Requirement(
                    _label_key(key.strip(), selector),
                    "!=",
                    frozenset({_label_value(value.strip(), selector)}),
                )
            )
        elif "=" in part:
            key, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            requirements.append(
                Requirement(
                    _label_key(key.strip(), selector),
                    "=",
                    frozenset({_label_value(value.strip(), selector)}),
                )
            )
        elif part.startswith("!"):
            requirements.append(
                Requirement(_label_key(part[1:].strip(), selector), "!exists", frozenset())
            )
        else:
            requirements.append(Requirement(_label_key(part, selector), "exists", frozenset()))
    return requirements


def label_predicate(selector: str | None) -> Predicate | None:
    if not selector:
        return None
    requirements = parse_label_selector(selector)

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in requirements)

    return matches


def lookup(obj: dict[str, Any], path: str) -> str:
    """The value at a dotted path as a string ("" when absent), as field selectors compare it."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(selector: str | None) -> list[tuple[str, str, str]]:
    """(path, operator, value) triples; operator is = or !=."""
    if not selector:
        return []
    terms = []
    for part in _split_top_level(selector):
        if "!=" in part:
            path, value = part.split("!=", 1)
            operator = "!="
        elif "=" in part:
            path, value = part.split("==", 1) if "==" in part else part.split("=", 1)
            operator = "="
        else:
            raise BadRequest(
                f"fieldSelector term {part!r} must be path=value or path!=value",
                field="fieldSelector",
            )
        path = path.strip()
        if not re.match(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$", path):
            raise BadRequest(
                f"fieldSelector path {path!r} is not a dotted field path", field="fieldSelector"
            )
        terms.append((path, operator, value.strip()))
    return terms


def field_predicate(terms: list[tuple[str, str, str]]) -> Predicate | None:
    if not terms:
        return None

    def matches(obj: dict[str, Any]) -> bool:
        for path, operator, value in terms:
            if (lookup(obj, path) == value) != (operator == "="):
                return False
        return True

    return matches
