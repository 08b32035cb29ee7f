"""DeepSpec-style online drafter training: data, target regeneration, losses, the training loop."""
