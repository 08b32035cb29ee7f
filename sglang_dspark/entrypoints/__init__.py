"""Entry points: the in-process Engine and the HTTP server."""
