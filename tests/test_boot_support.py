"""The boot tests' SSH wait and failure output (tests/support/boot.py), without QEMU:
a fake testinfra host refuses authentication, then sudo, then lets `tester` in."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from support import boot


class FakeClient:
    closed = 0

    def close(self) -> None:
        FakeClient.closed += 1


class FakeHost:
    """Answers `run` from a script: an exception to raise or an exit code to return."""

    def __init__(self, script: list) -> None:
        self.script = script
        self.backend = SimpleNamespace()
        self.calls = 0

    def run(self, command: str):
        self.calls += 1
        self.backend.client = FakeClient()  # what testinfra caches on connect
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, Exception):
            raise step
        return SimpleNamespace(rc=step, stderr="sudo: a password is required\n")


def _guest(tmp_path: Path, name: str, lines: int) -> SimpleNamespace:
    log = tmp_path / f"{name}.serial.log"
    text = "\n".join(f"{name} line {i}" for i in range(lines))
    return SimpleNamespace(name=name, serial_log=log, console=lambda: text)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(boot.time, "sleep", lambda s: None)


def test_authentication_and_sudo_refusals_are_retried_on_fresh_connections():
    host = FakeHost([paramiko.AuthenticationException("Authentication failed."),
                     ConnectionRefusedError(111, "refused"), 1, 0])
    FakeClient.closed = 0
    boot.wait_ssh(host, timeout=60)
    assert host.calls == 4
    assert FakeClient.closed == 3  # each failure dropped testinfra's cached client
    assert "client" in vars(host.backend)  # the working connection is kept


def test_timeout_names_the_last_failure_and_shows_both_serial_tails(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 50))
    monkeypatch.setattr(boot.time, "monotonic", lambda: next(clock))
    host = FakeHost([paramiko.AuthenticationException("Authentication failed.")] * 100)
    guests = (_guest(tmp_path, "n1", 100), _guest(tmp_path, "n2", 10))
    with pytest.raises(AssertionError) as e:
        boot.wait_ssh(host, timeout=300, guests=guests)
    msg = str(e.value)
    assert msg.startswith("SSH as tester failed for 300 s; last: AuthenticationException")
    assert "n1 line 39" not in msg and "n1 line 40" in msg and "n1 line 99" in msg  # 60
    assert "n2 line 0" in msg and "n2 line 9" in msg
    assert "--- n1: last 60 lines of" in msg and "--- n2: last 10 lines of" in msg


def test_serial_on_failure_prints_every_guest_and_reraises(tmp_path, capsys):
    guests = (_guest(tmp_path, "n1", 3), _guest(tmp_path, "n2", 3))
    with pytest.raises(ValueError), boot.serial_on_failure(*guests):
        raise ValueError("boom")
    out = capsys.readouterr().out
    assert "n1 line 2" in out and "n2 line 2" in out
    with boot.serial_on_failure(*guests):
        pass
    assert capsys.readouterr().out == ""


def test_fill_section_gives_the_boot_tests_a_valid_state():
    """The boot tests edit the network.yaml `init` writes; a template change must not
    silently drop their user or service (it once did: SSH as tester was refused)."""
    from agent.authoring.identity import render_network_yaml
    from agent.desired.schema import parse_state
    from support.boot import fill_section

    text = fill_section(render_network_yaml("boot").decode(), "nodes:",
                        "  - {name: n1, role: sclerotium}")
    text = fill_section(text, "users:", '  - {name: tester, sudo: true, ssh_keys: ["k"]}')
    text = fill_section(text, "  endomycetes:", "    web:\n      image: localhost/web:1\n")
    state = parse_state(text.encode())
    assert [n.name for n in state.nodes] == ["n1"]
    assert [(u.name, u.sudo) for u in state.users] == [("tester", True)]
    assert [s.name for s in state.endomycetes] == ["web"]
