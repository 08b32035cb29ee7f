"""Compute kernels: Triton kernels with torch references (installed as sglang_dspark.kernels)."""
