"""ServerArgs: SGLang's flag spellings on the command line, and clear errors for bad values."""

import argparse

import pytest
import torch

from sglang_dspark.server_args import ServerArgs


def parse(*argv: str) -> ServerArgs:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli_args(parser.parse_args(list(argv)))


def test_grammar_flags_parse():
    args = parse(
        "--grammar-backend", "outlines", "--grammar-compile-timeout", "5", "--grammar-compile-memory-limit", "1.5"
    )
    assert (args.grammar_backend, args.grammar_compile_timeout, args.grammar_compile_memory_limit) == (
        "outlines",
        5.0,
        1.5,
    )
    assert parse().grammar_compile_memory_limit == 4.0


@pytest.mark.parametrize(
    "overrides,flag",
    [
        ({"grammar_compile_timeout": 0}, "--grammar-compile-timeout"),
        ({"grammar_compile_memory_limit": -1}, "--grammar-compile-memory-limit"),
        ({"grammar_backend": "regexy"}, "--grammar-backend"),
        ({"nnodes": 2, "tp_size": 2}, "--dist-init-addr"),
        ({"nnodes": 2, "tp_size": 3, "dist_init_addr": "10.0.0.1:5000"}, "--nnodes"),
        ({"node_rank": 1}, "--node-rank"),
        ({"dp_size": 0}, "--dp-size"),
        ({"tp_size": 2, "speculative_algorithm": "NGRAM"}, "--speculative-dspark-sps-table-path"),
        ({"device": "tpu"}, "--device"),
        ({"attention_backend": "fa3"}, "--attention-backend"),
        ({"cuda_graph_max_bs": 0}, "--cuda-graph-max-bs"),
    ],
)
def test_bad_values_name_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        ServerArgs(**overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_device_resolves_without_a_gpu():
    assert ServerArgs(device="auto").resolved_device() == "cpu"
    assert ServerArgs().resolved_device() == "cpu"
    with pytest.raises(ValueError, match="--device cuda: torch .* sees no CUDA device"):
        ServerArgs(device="cuda").resolved_device()
