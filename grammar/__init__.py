"""Structured-output subsystem (installed as sglang_dspark.grammar)."""
