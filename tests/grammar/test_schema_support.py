import pytest

from sglang_dspark.grammar.base import Constraint, ConstraintKind, GrammarError
from sglang_dspark.grammar.schema_support import NOT_ENFORCEABLE, SchemaSupport

SUPPORT = SchemaSupport("test", NOT_ENFORCEABLE, multiple_of_numbers=False)


def test_unsupported_keyword_is_named_with_its_path():
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(GrammarError, match=r"'uniqueItems' \(at #/properties/tags\)"):
        SUPPORT.check(schema)
    nested = {"$defs": {"x": {"not": {"type": "string"}}}, "$ref": "#/$defs/x"}
    with pytest.raises(GrammarError, match=r"'not' \(at #/\$defs/x\)"):
        SUPPORT.check(nested)


def test_annotations_and_supported_keywords_pass():
    SUPPORT.check(
        {
            "title": "t",
            "description": "d",
            "type": "object",
            "properties": {"n": {"type": "integer", "multipleOf": 3, "format": "int32", "default": 3}},
            "required": ["n"],
        }
    )


def test_multiple_of_on_numbers_and_one_of():
    with pytest.raises(GrammarError, match="multipleOf"):
        SUPPORT.check({"type": "number", "multipleOf": 0.5})
    SUPPORT.check({"oneOf": [{"type": "string"}, {"type": "array"}]})
    SUPPORT.check({"oneOf": [{"const": "a"}, {"const": "b"}]})
    for overlapping in ([{"type": "integer"}, {"type": "number"}], [{"type": "object"}, {"properties": {}}]):
        with pytest.raises(GrammarError, match="oneOf"):
            SUPPORT.check({"oneOf": overlapping})


def test_constraint_from_fields():
    assert Constraint.from_fields() is None
    assert Constraint.from_fields(regex="a+") == Constraint(ConstraintKind.REGEX, "a+")
    assert Constraint.from_fields(json_schema='{"type":  "object"}').kind == ConstraintKind.JSON_OBJECT
    assert Constraint.from_fields(json_schema='{"type": "string"}').kind == ConstraintKind.JSON_SCHEMA
    with pytest.raises(GrammarError, match="not valid JSON"):
        Constraint.from_fields(json_schema="{")
    with pytest.raises(GrammarError, match="object or a boolean"):
        Constraint(ConstraintKind.JSON_SCHEMA, "[1]").schema()


def test_combinator_siblings_refused_only_where_unsupported():
    schema = {"type": "object", "required": ["a"], "anyOf": [{"required": ["b"]}, {"required": ["c"]}]}
    with pytest.raises(GrammarError, match=r"'anyOf' \(at #\) next to the keywords \['required', 'type'\]"):
        SchemaSupport("x", frozenset(), combinator_siblings=False).check(schema)
    SchemaSupport("x", frozenset()).check(schema)
    # annotations next to a combinator are fine everywhere
    SchemaSupport("x", frozenset(), combinator_siblings=False).check(
        {"title": "t", "$schema": "s", "anyOf": [{"type": "string"}, {"type": "integer"}]}
    )


def test_enum_of_another_type_and_negated_pattern_classes():
    """From JSONSchemaBench (Github_easy/o30360, o27354): outlines generated an enum string for a node typed
    object, and raw quotes inside a string whose pattern was `^/[^\\u0000]+$`."""
    support = SchemaSupport("x", frozenset(), negated_pattern_classes=False)
    with pytest.raises(GrammarError, match=r"'enum' value \"A\" \(at #/properties/b\)"):
        support.check({"properties": {"b": {"type": "object", "enum": ["A"]}}})
    SchemaSupport("x", frozenset()).check({"type": ["string", "null"], "enum": ["A", None]})
    with pytest.raises(GrammarError, match="negated character class"):
        support.check({"type": "string", "pattern": "^/[^\\u0000]+$"})
    SchemaSupport("x", frozenset()).check({"type": "string", "pattern": "^/[^\\u0000]+$"})
    support.check({"type": "string", "pattern": "^[a-z]+$"})


def test_keywords_ignored_next_to_enum_pattern_or_format():
    strict = SchemaSupport(
        "strict", frozenset(), enum_siblings=False, length_with_pattern=False, pattern_lookaround=False
    )
    with pytest.raises(GrammarError, match=r"'enum' value \"a\" \(at #\) does not satisfy \['minLength'\]"):
        strict.check({"type": "string", "enum": ["a", "bb"], "minLength": 2})
    strict.check({"type": "string", "enum": ["aa", "bb"], "minLength": 2})  # every value validates
    with pytest.raises(GrammarError, match=r"'enum' value 3"):
        strict.check({"const": 3, "minimum": 5})
    with pytest.raises(GrammarError, match=r"\['maxLength', 'minLength'\] \(at #/properties/x\) next to a 'pattern'"):
        strict.check({"properties": {"x": {"pattern": "^a+$", "minLength": 1, "maxLength": 3}}})
    with pytest.raises(GrammarError, match="format"):
        strict.check({"type": "string", "format": "email", "maxLength": 9})
    with pytest.raises(GrammarError, match="lookahead"):
        strict.check({"type": "string", "pattern": "^(?=a).*$"})
    for schema in (
        {"type": "string", "enum": ["a"], "minLength": 2},
        {"type": "string", "pattern": "^a+$", "minLength": 1},
        {"type": "string", "pattern": "(?!a)"},
    ):
        SUPPORT.check(schema)  # a backend that enforces these


def test_pattern_alternation_and_undeclared_required():
    strict = SchemaSupport("strict", frozenset(), pattern_alternation=False, required_undeclared=False)
    with pytest.raises(GrammarError, match=r"top-level '\|'"):
        strict.check({"type": "string", "pattern": "a|b"})
    for grouped in ("(a|b)", "[|]x", "a\\|b", "^(?:x|y)$"):
        strict.check({"type": "string", "pattern": grouped})
    with pytest.raises(GrammarError, match=r"'required' \(at #\) names \['b'\]"):
        strict.check({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]})
    SUPPORT.check({"type": "string", "pattern": "a|b"})
