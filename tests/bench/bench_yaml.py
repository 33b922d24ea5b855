"""How long refusing deep YAML takes at the size cap (run with -m bench; prints, never
asserts a time: the machine's load decides wall-clock figures)."""

from __future__ import annotations

import time

import pytest

from agent.desired.schema import parse_state
from agent.errors import YamlError
from support.yaml_shapes import DEEP, services_yaml

pytestmark = pytest.mark.bench


def test_deep_yaml_refusal_times():
    for shape, doc in DEEP.items():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            with pytest.raises(YamlError):
                parse_state(doc)
            best = min(best, time.perf_counter() - t)
        print(f"{shape:22} {len(doc):7} bytes refused in {best * 1000:6.1f} ms (goal < 100)")


def test_large_state_parse_times():
    """Issue 18 item 6: the report's 252 KB, 4900-service document (refused by the caps
    after a full parse, off the event loop) and the largest the caps let through."""
    from agent.desired.schema import MAX_ENTRIES
    from agent.errors import SchemaError

    for label, data in (("4900 services", services_yaml(4900, pad=13)),
                        (f"{MAX_ENTRIES} services, env", services_yaml(MAX_ENTRIES, env=16))):
        t = time.perf_counter()
        try:
            parse_state(data)
        except SchemaError:
            pass
        print(f"{label:24} {len(data):7} bytes parsed in {time.perf_counter() - t:6.2f} s")
