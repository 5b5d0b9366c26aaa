"""The genq CLI as a user runs it (subprocess) against the sim stack: help texts, `genq jobs`
list/show/cancel/follow and `genq chat`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack, submit, wait_job

SUBCOMMANDS = ["up", "api", "worker", "chat", "jobs", "fetch-model"]


def genq(*args: str, url: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env_url = ["--url", url] if url else []
    return subprocess.run(
        [sys.executable, "-m", "genq.cli", *args, *env_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_top_level_help_lists_every_command_with_examples() -> None:
    out = genq("--help").stdout
    for cmd in SUBCOMMANDS:
        assert f"\n  {cmd} " in out, cmd
    assert "examples:" in out and "genq jobs follow" in out


@pytest.mark.parametrize(
    "args",
    [[c, "--help"] for c in SUBCOMMANDS]
    + [["jobs", a, "--help"] for a in ("list", "show", "cancel", "follow")],
)
def test_every_subcommand_help_has_options_and_an_example(args: list[str]) -> None:
    r = genq(*args)
    assert r.returncode == 0, r.stderr
    assert "options:" in r.stdout
    assert "example" in r.stdout, r.stdout


def test_jobs_list_show_follow(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "cli", "params": {"max_tokens": 6}})
        wait_job(c, job["id"])
    r = genq("jobs", "list", "--json", "--limit", "50", url=sim_stack.url)
    assert r.returncode == 0, r.stderr
    assert job["id"] in {j["id"] for j in json.loads(r.stdout)}
    r = genq("jobs", "list", "--status", "succeeded", url=sim_stack.url)
    assert r.returncode == 0 and job["id"][:12] in r.stdout and "succeeded" in r.stdout
    r = genq("jobs", "show", job["id"], url=sim_stack.url)
    assert r.returncode == 0 and "tok0 tok1 tok2 tok3 tok4 tok5" in r.stdout
    r = genq("jobs", "show", job["id"], "--json", url=sim_stack.url)
    assert json.loads(r.stdout)["status"] == "succeeded"
    r = genq("jobs", "follow", job["id"], url=sim_stack.url)
    assert r.returncode == 0
    assert r.stdout.strip() == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert job["id"] in r.stderr and "succeeded" in r.stderr
    r = genq("jobs", "follow", job["id"], "--after", "3", url=sim_stack.url)
    assert r.stdout.strip() == "tok4 tok5"
    r = genq("jobs", "show", "job_nope", url=sim_stack.url)
    assert r.returncode != 0 and "404" in r.stderr


def test_jobs_cancel_and_follow_exit_status(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "long", "params": {"max_tokens": 5000}})
    r = genq("jobs", "cancel", job["id"], url=sim_stack.url)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = genq("jobs", "cancel", job["id"], url=sim_stack.url)
    assert r.returncode != 0 and "already cancelled" in r.stderr
    r = genq("jobs", "follow", job["id"], url=sim_stack.url)
    assert r.returncode == 1 and "cancelled" in r.stderr


def test_chat_one_shot_and_interactive(sim_stack: Stack) -> None:
    r = genq("chat", "hello there", "--max-tokens", "3", "-v", url=sim_stack.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "tok0 tok1 tok2"
    assert "job_" in r.stderr and "3 tokens" in r.stderr and "TTFT" in r.stderr
    p = subprocess.run(
        [sys.executable, "-m", "genq.cli", "chat", "--max-tokens", "2", "--url", sim_stack.url],
        cwd=ROOT,
        input="first\nsecond\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("tok0 tok1") == 2


def test_local_redis_with_a_relative_data_dir(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`genq up` passes `.genq/redis`: redis-server chdirs to --dir before opening its log,
    so a relative path must be made absolute first."""
    from genq.redis_server import LocalRedis

    monkeypatch.chdir(tmp_path)
    r = LocalRedis(Path(".genq/redis")).start()
    try:
        assert r.ping() and (tmp_path / ".genq/redis/redis.log").exists()
    finally:
        r.stop()


def test_local_redis_is_out_of_reach_of_a_terminal_ctrl_c(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A terminal's Ctrl-C sends SIGINT to its whole foreground process group. The Redis that
    `genq up` starts runs in a session of its own, so it outlives the Ctrl-C until the worker
    and the API have drained (they need it to finish their jobs) and `genq up` stops it."""
    import os

    from genq.redis_server import LocalRedis

    r = LocalRedis(tmp_path / "redis").start()
    try:
        assert r.proc is not None
        assert os.getsid(r.proc.pid) == r.proc.pid != os.getsid(0)
        assert os.getpgid(r.proc.pid) != os.getpgid(0)
    finally:
        r.stop()
