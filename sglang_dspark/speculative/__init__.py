"""Speculative decoding: DSpark drafter, verify-length planning, confidence calibration, metrics, n-gram proposals."""
