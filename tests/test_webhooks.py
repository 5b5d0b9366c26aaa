"""Job webhooks against a local receiver: signed Standard-Webhooks style, retried with
backoff, every attempt visible on the job, a receiver that is down ends `failed`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.webhook_targets import BlockedAddress, check_submitted, resolve
from api.webhooks import backoff_s, sign
from common.errors import InvalidRequest
from genq.redis_server import free_port
from tests.stack import Stack, submit, wait_job

SECRET = "whsec_" + base64.b64encode(b"genq-test-webhook-secret-bytes!!").decode()


class Receiver:
    """A loopback HTTP endpoint that records every POST; `fail_first` answers 500 that many
    times before answering 204."""

    def __init__(self, fail_first: int = 0):
        self.calls: list[dict[str, Any]] = []
        self.fail_first = fail_first
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                recv.calls.append({"headers": dict(self.headers.items()), "body": body})
                fail = len(recv.calls) <= recv.fail_first
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("webhooks"),
        env={
            "GENQ_WEBHOOK_SECRET": SECRET,
            "GENQ_WEBHOOK_MAX_ATTEMPTS": "3",
            "GENQ_WEBHOOK_BACKOFF_S": "0.3",
            "GENQ_WEBHOOK_TIMEOUT_S": "2",
            "GENQ_BACKGROUND_TICK_S": "0.1",
            "GENQ_WEBHOOK_ALLOW_PRIVATE": "true",  # the receivers here listen on 127.0.0.1
        },
    )
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "20")
        yield s
    finally:
        s.stop()


def _verify(call: dict[str, Any]) -> dict[str, Any]:
    h = {k.lower(): v for k, v in call["headers"].items()}
    msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{ts}.".encode() + call["body"], hashlib.sha256).digest()
    ).decode()
    assert h["webhook-signature"] == f"v1,{expected}"
    assert abs(time.time() - ts) < 60
    return json.loads(call["body"])  # type: ignore[no-any-return]


def _wait_deliveries(c: Any, job_id: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = c.get(f"/v1/jobs/{job_id}").json().get("webhook_deliveries") or []
        if len(d) >= n:
            return d  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise TimeoutError(f"{job_id}: deliveries {d}")


def test_started_and_completed_are_signed_and_recorded(hook_stack: Stack) -> None:
    recv = Receiver()
    try:
        with hook_stack.client() as c:
            job = submit(
                c,
                {
                    "prompt": "x",
                    "params": {"max_tokens": 5},
                    "webhook": {"url": recv.url, "events": ["started", "completed"]},
                },
            )
            rec = wait_job(c, job["id"])
            deliveries = _wait_deliveries(c, job["id"], 2)
        assert [(d["event"], d["attempt"], d["state"], d["status_code"]) for d in deliveries] == [
            ("started", 1, "delivered", 204),
            ("completed", 1, "delivered", 204),
        ]
        payloads = [_verify(call) for call in recv.calls]
        assert [p["type"] for p in payloads] == ["job.started", "job.completed"]
        assert payloads[0]["data"]["id"] == job["id"] and payloads[0]["data"]["status"] in (
            "running",
            "succeeded",
        )
        done = payloads[1]["data"]
        assert done["status"] == "succeeded" and done["text"] == rec["text"] == (
            "tok0 tok1 tok2 tok3 tok4"
        )
        assert "request" not in done
        ids = [call["headers"]["webhook-id"] for call in recv.calls]
        assert ids == [f"msg_{job['id']}_started", f"msg_{job['id']}_completed"]
    finally:
        recv.close()
    log = (hook_stack.tmp / "api.log").read_text()
    assert SECRET not in log and SECRET.removeprefix("whsec_") not in log
    assert "token=abc" not in log  # URL query strings may carry credentials


def test_default_event_is_completed_only(hook_stack: Stack) -> None:
    recv = Receiver()
    try:
        with hook_stack.client() as c:
            job = submit(
                c, {"prompt": "x", "params": {"max_tokens": 2}, "webhook": {"url": recv.url}}
            )
            wait_job(c, job["id"])
            deliveries = _wait_deliveries(c, job["id"], 1)
            time.sleep(0.5)
        assert [d["event"] for d in deliveries] == ["completed"] and len(recv.calls) == 1
    finally:
        recv.close()


def test_failed_attempt_is_retried_with_the_same_id(hook_stack: Stack) -> None:
    recv = Receiver(fail_first=1)
    try:
        with hook_stack.client() as c:
            job = submit(
                c,
                {
                    "prompt": "x",
                    "params": {"max_tokens": 2},
                    "webhook": {"url": recv.url, "events": ["completed"]},
                },
            )
            wait_job(c, job["id"])
            d = _wait_deliveries(c, job["id"], 2)
        assert [(x["attempt"], x["state"], x["status_code"]) for x in d] == [
            (1, "retrying", 500),
            (2, "delivered", 204),
        ]
        assert d[1]["at"] - d[0]["at"] >= 0.3 * 0.9  # the first backoff step
        assert len({call["headers"]["webhook-id"] for call in recv.calls}) == 1
        for call in recv.calls:
            _verify(call)
    finally:
        recv.close()


def test_receiver_down_retries_then_fails(hook_stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    with hook_stack.client() as c:
        job = submit(
            c,
            {
                "prompt": "x",
                "params": {"max_tokens": 2},
                "webhook": {"url": url, "events": ["completed"]},
            },
        )
        assert wait_job(c, job["id"])["status"] == "succeeded"
        d = _wait_deliveries(c, job["id"], 3)
        time.sleep(1.5)  # nothing more after the last attempt
        assert len(c.get(f"/v1/jobs/{job['id']}").json()["webhook_deliveries"]) == 3
    assert [(x["attempt"], x["state"]) for x in d] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert all(x["status_code"] is None and x["error"] == "ConnectError" for x in d)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(d)]
    assert gaps[0] >= 0.3 * 0.9 and gaps[1] >= 0.6 * 0.9, gaps  # exponential backoff


def test_bad_webhook_is_rejected(hook_stack: Stack) -> None:
    with hook_stack.client() as c:
        for hook, field in [
            ({"url": "ftp://x"}, "webhook.url"),
            ({"url": "http://127.0.0.1/", "events": ["queued"]}, "webhook.events.0"),
        ]:
            r = c.post("/v1/jobs", json={"prompt": "x", "webhook": hook})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_signature_helpers() -> None:
    # A known vector from the Standard Webhooks spec's reference implementations.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert [backoff_s(1.0, a) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_s(1.0, 30) == 600.0


def test_webhook_survives_an_api_restart(tmp_path: Path) -> None:
    """The event is scheduled in Redis; an API that restarts before delivering still
    delivers it (the dispatcher's state is all in Redis)."""
    recv = Receiver()
    env = {"GENQ_WEBHOOK_SECRET": SECRET, "GENQ_BACKGROUND_TICK_S": "0.1"}
    s = Stack(tmp_path / "r", env={**env, "GENQ_WEBHOOK_ALLOW_PRIVATE": "true"})
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "50")
        with s.client() as c:
            job = submit(
                c,
                {
                    "prompt": "x",
                    "params": {"max_tokens": 40},
                    "webhook": {"url": recv.url, "events": ["completed"]},
                },
            )
        assert s.api is not None
        s.api.kill()  # down while the job runs and ends
        time.sleep(3)
        s.start_api()
        with s.client() as c:
            d = _wait_deliveries(c, job["id"], 1)
        assert d[0]["state"] == "delivered" and len(recv.calls) == 1
        assert _verify(recv.calls[0])["data"]["status"] == "succeeded"
    finally:
        recv.close()
        s.stop()


# -- address policy: no webhooks to non-public addresses unless allowed -----------------------


def test_default_policy_rejects_private_and_loopback_urls_at_submission(stack: Stack) -> None:
    stack.start_worker("--sim-step-ms", "5")
    with stack.client() as c:
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/hook",
            "http://[::1]:9000/hook",
            "http://[::ffff:192.168.0.1]/hook",
        ]:
            r = c.post("/v1/jobs", json={"prompt": "x", "webhook": {"url": url}})
            assert r.status_code == 400, (url, r.text)
            err = r.json()["error"]
            assert err["param"] == "webhook.url" and "GENQ_WEBHOOK_ALLOW_PRIVATE" in err["message"]


def test_default_policy_blocks_a_name_that_resolves_to_a_private_address(stack: Stack) -> None:
    """Checked again at delivery, on what the name resolves to: refused without a retry."""
    host = socket.gethostname()
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        pytest.skip("this machine's name does not resolve")
    if not any(addr.startswith(p) for p in ("10.", "127.", "172.", "192.168.")):
        pytest.skip(f"{host} resolves to {addr}")
    stack.start_worker("--sim-step-ms", "5")
    with stack.client() as c:
        job = submit(
            c, {"prompt": "x", "params": {"max_tokens": 2}, "webhook": {"url": f"http://{host}/h"}}
        )
        assert wait_job(c, job["id"])["status"] == "succeeded"
        d = _wait_deliveries(c, job["id"], 1)
        time.sleep(1.5)  # no retry follows
        d = c.get(f"/v1/jobs/{job['id']}").json()["webhook_deliveries"]
    assert [(x["attempt"], x["state"]) for x in d] == [(1, "failed")]
    assert "non-public" in d[0]["error"] and "GENQ_WEBHOOK_ALLOW_PRIVATE" in d[0]["error"]


def test_check_submitted_allows_public_hosts_and_everything_when_allowed() -> None:
    check_submitted("https://hooks.example.com/x", allow_private=False)
    check_submitted("http://93.184.216.34/x", allow_private=False)
    check_submitted("http://127.0.0.1/x", allow_private=True)
    with pytest.raises(InvalidRequest):
        check_submitted("http://app.localhost/x", allow_private=False)


async def test_delivery_connects_to_the_address_it_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name is resolved once, checked, and that address is the one
    connected to, with the name kept in the Host header and the TLS server name."""
    import asyncio

    answers = {"good.example": "93.184.216.34", "rebind.example": "10.0.0.7"}

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    t = await resolve("https://good.example:8443/hook?a=1", allow_private=False)
    assert t.url == "https://93.184.216.34:8443/hook?a=1"
    assert t.headers == {"host": "good.example:8443"}
    assert t.extensions == {"sni_hostname": "good.example"}
    with pytest.raises(BlockedAddress):
        await resolve("http://rebind.example/hook", allow_private=False)
    v6 = await resolve("http://[2606:4700::1111]:8080/h", allow_private=False)
    assert v6.url == "http://[2606:4700::1111]:8080/h"
    assert v6.headers == {"host": "[2606:4700::1111]:8080"}
    allowed = await resolve("http://rebind.example/hook", allow_private=True)
    assert allowed.url == "http://rebind.example/hook" and allowed.headers == {}
