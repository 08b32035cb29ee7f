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
