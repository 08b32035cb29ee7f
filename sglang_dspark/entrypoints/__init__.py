"""Entry points: the in-process Engine (and later the HTTP server)."""
