"""Tensor parallelism over torch.distributed: the rank group, its collectives and how a model is split."""
