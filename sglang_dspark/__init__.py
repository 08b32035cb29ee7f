"""sglang-dspark: an SGLang-native LLM serving runtime with DSpark speculative decoding."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import sglang_dspark.grammar` etc. do not pay for torch + transformers.
    if name == "Engine":
        from sglang_dspark.entrypoints.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["Engine", "__version__"]
