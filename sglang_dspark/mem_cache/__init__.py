"""KV memory: token-level KV pool and radix prefix cache."""
