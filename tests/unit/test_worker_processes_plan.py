"""`enrollstream worker --processes N`: which roles each child runs, its port, and the restart backoff.
The children themselves are exercised in tests/integration/test_worker_processes.py."""

from __future__ import annotations

import pytest

from enrollstream.config import InvalidSettings, Settings
from enrollstream.runtime.supervisor import RestartPolicy, check_processes, child_environment, child_roles


def test_the_port_binding_roles_run_in_the_first_child_only() -> None:
    roles = ("decider", "projector", "scheduler", "api", "unsubscribe", "relay")
    assert child_roles(roles, 0) == roles
    assert child_roles(roles, 1) == ("decider", "projector", "scheduler", "relay")
    assert child_roles(roles, 7) == child_roles(roles, 1)


def test_roles_that_only_bind_a_port_cannot_run_in_several_processes() -> None:
    check_processes(Settings(), ("api",), 1)
    with pytest.raises(InvalidSettings, match="run in one process only"):
        check_processes(Settings(), ("api", "unsubscribe"), 2)
    check_processes(Settings(), ("api", "decider"), 2)


def test_each_child_gets_its_own_name_and_metrics_port() -> None:
    base = {"KEPT": "1", "ENROLLSTREAM_HTTP_PORT": "9464"}
    first, third = (child_environment(base, Settings(http_port=9464), i) for i in (0, 2))
    assert (first["ENROLLSTREAM_WORKER_NAME"], first["ENROLLSTREAM_HTTP_PORT"]) == ("worker-0", "9464")
    assert (third["ENROLLSTREAM_WORKER_NAME"], third["ENROLLSTREAM_HTTP_PORT"]) == ("worker-2", "9466")
    assert third["KEPT"] == "1"
    # 0 (any free port, logged by each child) stays 0 for every child.
    assert child_environment(base, Settings(http_port=0), 3)["ENROLLSTREAM_HTTP_PORT"] == "0"


def test_ports_past_65535_and_process_counts_out_of_bounds_are_refused_before_anything_starts() -> None:
    with pytest.raises(InvalidSettings, match="65536"):
        check_processes(Settings(http_port=65535), ("decider",), 2)
    for processes in (0, 65):
        with pytest.raises(InvalidSettings, match="between 1 and 64"):
            check_processes(Settings(), ("decider",), processes)


def test_the_restart_backoff_doubles_up_to_its_bound() -> None:
    policy = RestartPolicy(backoff_s=1.0, backoff_max_s=30.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6, 1000)] == [1, 2, 4, 8, 16, 30, 30]
