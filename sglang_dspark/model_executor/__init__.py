"""Model execution: forward-batch metadata and the model runner."""
