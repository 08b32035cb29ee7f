"""Reject JSON-schema keywords a backend would silently ignore.

A backend that drops a validation keyword (xgrammar ignores ``uniqueItems`` and ``allOf``,
outlines-core ignores ``minimum``...) produces output that does not validate against the schema.
Such schemas are refused up front with a 400 naming the keyword and where it is, so that every
output we return for a schema is valid. Annotation keywords (``title``, ``format``...) are fine.

``oneOf`` is approximated by ``anyOf`` in every backend; that is exact only when no value can match
two branches, so it is accepted only when the branches have pairwise disjoint ``type`` or ``const``.
xgrammar and outlines-core do not intersect ``anyOf`` / ``oneOf`` with validation keywords next to it
(xgrammar enforces only the branches, outlines only the siblings): there such a node is refused. Both
also generate any ``enum`` value whatever ``minLength`` / ``pattern`` ... say next to it (refused where a
value would not validate), and xgrammar ignores string lengths next to ``pattern`` / ``format`` and
lookarounds in patterns (it logs a warning): refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import jsonschema

from sglang_dspark.grammar.base import GrammarError

# Keywords no backend here can enforce in a grammar (or enforces wrongly).
NOT_ENFORCEABLE = frozenset(
    {
        "uniqueItems",
        "not",
        "if",
        "then",
        "else",
        "dependencies",
        "dependentRequired",
        "dependentSchemas",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "contains",
        "minContains",
        "maxContains",
    }
)

# Keywords whose value is a subschema, a list of subschemas, or a map of name -> subschema.
_SUBSCHEMA = (
    "additionalProperties",
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_SUBSCHEMA_LIST = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SUBSCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Keywords that never constrain a value (annotations, identifiers, definitions used elsewhere).
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default", "$defs", "definitions"}
)


def _subschemas(schema: dict, path: str) -> Iterator[tuple[dict, str]]:
    for key in _SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            yield schema[key], f"{path}/{key}"
    for key in _SUBSCHEMA_LIST:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                if isinstance(sub, dict):
                    yield sub, f"{path}/{key}/{i}"
    for key in _SUBSCHEMA_MAP:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                if isinstance(sub, dict):
                    yield sub, f"{path}/{key}/{name}"


def _disjoint_branches(branches: list) -> bool:
    """True if no JSON value can match two of the branches (judged by ``type`` or ``const``)."""
    if not all(isinstance(b, dict) for b in branches):
        return False
    if all(isinstance(b.get("type"), str) for b in branches):
        types = [b["type"] for b in branches]
        return len(set(types)) == len(types) and not {"integer", "number"} <= set(types)
    if all("const" in b for b in branches):
        consts = [json.dumps(b["const"], sort_keys=True) for b in branches]
        return len(set(consts)) == len(consts)
    return False


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _check_enum_type(node: dict, path: str) -> None:
    """An enum value of another type than the node's `type` can never validate: refuse the contradiction
    (backends would generate it anyway)."""
    types = node.get("type")
    types = [types] if isinstance(types, str) else types
    if not isinstance(node.get("enum"), list) or not isinstance(types, list):
        return
    for value in node["enum"]:
        if not any(_JSON_TYPES.get(t, lambda v: True)(value) for t in types):
            raise GrammarError(f"'enum' value {json.dumps(value)} (at {path}) does not have the node's type {types}")


# Value keywords next to `enum` / `const` that a backend generating the listed values ignores.
_VALUE_KEYWORDS = (
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
)
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")


def _top_level_alternation(pattern: str) -> bool:
    """Whether a regex has a `|` outside every group and character class."""
    depth, in_class, escaped = 0, False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return True
    return False


def _check_enum_values(node: dict, path: str, backend: str) -> None:
    """Where a backend generates any listed value, each must also satisfy the value keywords next to it."""
    values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else []
    siblings = {k: node[k] for k in _VALUE_KEYWORDS if k in node}
    if not values or not siblings:
        return
    check = jsonschema.Draft202012Validator(siblings)
    for value in values:
        if not check.is_valid(value):
            raise GrammarError(
                f"'enum' value {json.dumps(value)} (at {path}) does not satisfy {sorted(siblings)} next to it, "
                f"and the {backend} grammar backend would generate it anyway"
            )


@dataclass(frozen=True)
class SchemaSupport:
    """What one backend enforces. ``check`` raises GrammarError naming the first keyword it cannot."""

    backend: str
    unsupported: frozenset[str]
    multiple_of_numbers: bool = True  # False: multipleOf is enforced on integers only
    combinator_siblings: bool = True  # False: anyOf / oneOf are not intersected with keywords next to them
    negated_pattern_classes: bool = True  # False: a `[^...]` in a string pattern may emit raw quotes / controls
    enum_siblings: bool = True  # False: `enum` / `const` values are generated ignoring minLength, pattern ...
    length_with_pattern: bool = True  # False: minLength / maxLength are ignored next to `pattern` / `format`
    pattern_lookaround: bool = True  # False: lookahead / lookbehind in a `pattern` is ignored
    pattern_alternation: bool = True  # False: a top-level `a|b` pattern is not grouped (`"a|b"` = `"a` or `b"`)
    required_undeclared: bool = True  # False: `required` names missing from `properties` are never generated

    def check(self, schema: dict | bool) -> None:
        stack = [(schema, "#")]
        while stack:
            node, path = stack.pop()
            if not isinstance(node, dict):
                continue
            for key in node:
                if key in self.unsupported:
                    raise GrammarError(
                        f"the JSON schema keyword '{key}' (at {path}) is not supported by the {self.backend} "
                        f"grammar backend: it cannot be enforced while generating"
                    )
            if "multipleOf" in node and not self.multiple_of_numbers and node.get("type") != "integer":
                raise GrammarError(
                    f"the JSON schema keyword 'multipleOf' (at {path}) is only supported on integers by the "
                    f"{self.backend} grammar backend"
                )
            if isinstance(node.get("oneOf"), list) and not _disjoint_branches(node["oneOf"]):
                raise GrammarError(
                    f"'oneOf' (at {path}) is only supported when its branches have distinct 'type's or "
                    f"'const's: it is generated as 'anyOf', which could match more than one branch"
                )
            _check_enum_type(node, path)
            pattern = node.get("pattern")
            if isinstance(pattern, str) and "[^" in pattern and not self.negated_pattern_classes:
                raise GrammarError(
                    f"the string 'pattern' (at {path}) has a negated character class, which the {self.backend} "
                    f"grammar backend would let match unescaped quotes and control characters (invalid JSON)"
                )
            if not self.enum_siblings:
                _check_enum_values(node, path, self.backend)
            lengths = sorted(k for k in ("minLength", "maxLength") if k in node)
            if lengths and not self.length_with_pattern and ("pattern" in node or "format" in node):
                raise GrammarError(
                    f"{lengths} (at {path}) next to a 'pattern' or 'format' is not supported by the {self.backend} "
                    f"grammar backend: it would ignore the length (use --grammar-backend llguidance)"
                )
            if isinstance(pattern, str) and not self.pattern_lookaround and any(x in pattern for x in _LOOKAROUND):
                raise GrammarError(
                    f"the string 'pattern' (at {path}) has a lookahead or lookbehind, which the {self.backend} "
                    f"grammar backend would ignore"
                )
            if isinstance(pattern, str) and not self.pattern_alternation and _top_level_alternation(pattern):
                raise GrammarError(
                    f"the string 'pattern' (at {path}) has a top-level '|', which the {self.backend} grammar backend "
                    f"does not group: it would leave the string unclosed (wrap the alternatives in parentheses)"
                )
            required, declared = node.get("required"), node.get("properties", {})
            if not self.required_undeclared and isinstance(required, list) and isinstance(declared, dict):
                missing = [name for name in required if name not in declared]
                if missing:
                    raise GrammarError(
                        f"'required' (at {path}) names {missing}, which are not in 'properties': the "
                        f"{self.backend} grammar backend would never generate them"
                    )
            for combinator in ("anyOf", "oneOf"):
                siblings = sorted(k for k in node if k not in _ANNOTATIONS and k not in ("anyOf", "oneOf"))
                if combinator in node and siblings and not self.combinator_siblings:
                    raise GrammarError(
                        f"'{combinator}' (at {path}) next to the keywords {siblings} is not supported by the "
                        f"{self.backend} grammar backend: it cannot enforce both (move them into every branch, "
                        f"or use --grammar-backend llguidance)"
                    )
            stack.extend(_subschemas(node, path))
