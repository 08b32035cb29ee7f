"""`python -m sglang_dspark.launch_server [--model-path PATH] [--port N] ...` (SGLang's flag names)."""

from __future__ import annotations

import argparse

from sglang_dspark.server_args import ServerArgs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_dspark.launch_server", description=__doc__)
    ServerArgs.add_cli_args(parser)
    server_args = ServerArgs.from_cli_args(parser.parse_args(argv))

    from sglang_dspark.entrypoints.http_server import launch_server  # after parsing: --help stays fast

    launch_server(server_args)


if __name__ == "__main__":
    main()
