"""Fixtures shared by several test modules. Plain helpers live in the support/ package;
test modules import from there, never from each other."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.lab.cluster import Cluster, cluster_down, cluster_up
from agent.node.vm.accel import ACCEL_ENV
from support.agents import keep_logs

# VMs under TCG in every test (agents started by tests inherit it): on the CI host the KVM
# probe can pass while Linux guests hang under nested KVM (agent/node/vm/accel.py)
os.environ.setdefault(ACCEL_ENV, "tcg")


@pytest.fixture(scope="module")
def start_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., Cluster]]:
    """Start real agents with `start_cluster(n, **cluster_up_kwargs)`; at the end of the
    module their logs are kept (support.agents.LOGS, named after the module) and every
    cluster is torn down."""
    started = []

    def start(n: int, **kwargs: Any) -> Cluster:
        d = tmp_path_factory.mktemp("cluster") / "c"
        c = cluster_up(d, n, progress=lambda _: None, **kwargs)
        started.append((c, d))
        return c

    yield start
    module = request.module.__name__.rsplit(".", 1)[-1]
    for i, (c, d) in enumerate(started):
        try:
            keep_logs(c, module + (f"-{i}" if i else ""))
        finally:
            cluster_down(d)
