"""Unmodified SGLang frontend programs (sglang 0.5.23, `sgl.RuntimeEndpoint`) against a real server."""

from __future__ import annotations

import re

import pytest
import requests

sgl = pytest.importorskip("sglang", reason="install the frontend: pip install --no-deps sglang==0.5.23")


@sgl.function
def capital(s, country):
    s += f"The capital of {country} is"
    s += sgl.gen("city", max_tokens=6, temperature=0, stop=["\n", "."])
    s += ". Is that right? Answer: " + sgl.select("verdict", choices=["yes", "no"])


@sgl.function
def pick(s, question, choices):
    s += question + " "
    s += sgl.select("answer", choices=choices)


@sgl.function
def year(s):
    s += "The first moon landing happened in the year "
    s += sgl.gen("year", max_tokens=6, regex=r"[0-9]{4}")


@pytest.fixture(scope="module")
def backend(server_url):
    return sgl.RuntimeEndpoint(server_url)


def test_gen_and_select(backend, server_url):
    state = capital.run(country="France", backend=backend)
    reference = requests.post(
        f"{server_url}/generate",
        json={
            "text": "The capital of France is",
            "sampling_params": {"max_new_tokens": 6, "temperature": 0, "stop": ["\n", "."]},
        },
        timeout=300,
    ).json()
    assert state["city"] == reference["text"] and state["city"].strip()
    assert state["verdict"] in ("yes", "no")
    assert state.text() == f"The capital of France is{state['city']}. Is that right? Answer: {state['verdict']}"


def test_select_picks_the_likely_choice(backend):
    state = pick.run(question="The capital of France is", choices=["Paris", "a banana", "Tuesday"], backend=backend)
    assert state["answer"] == "Paris"
    state = pick.run(question="1, 2, 3, 4,", choices=["5", "banana"], backend=backend)
    assert state["answer"] == "5"


def test_streaming(backend):
    plain = capital.run(country="Italy", backend=backend)
    streamed = capital.run(country="Italy", stream=True, backend=backend)
    pieces = list(streamed.text_iter())
    assert len(pieces) > 2 and "".join(pieces) == plain.text()
    assert streamed["city"] == plain["city"]


def test_run_batch(backend):
    countries = ["France", "Germany", "Japan"]
    batch = capital.run_batch([{"country": c} for c in countries], backend=backend, progress_bar=False)
    for country, state in zip(countries, batch):
        assert state["city"] == capital.run(country=country, backend=backend)["city"]


def test_regex_gen(backend):
    assert re.fullmatch(r"[0-9]{4}", year.run(backend=backend)["year"])
