"""Security over real processes: API keys (401/403, owner scoping, admin), per-key rate
limit, no prompts/outputs/secrets in logs or errors, Redis with a password and over TLS."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import require_admin
from common.settings import Settings
from genq.redis_server import LocalRedis, free_port
from tests.stack import Stack, submit, wait_job

pytestmark = pytest.mark.timeout(120)

KEY_A, KEY_B, KEY_RATE, ADMIN = (
    "key-a-0123456789",
    "key-b-0123456789",
    "key-rate-01234",
    "adm-k-0123",
)
RATE = 10
PASSWORD = "s3cr3t-Pa55w0rd"
PROMPT = "PRIVATE-PROMPT-zebra-quartz"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("security")
    redis = LocalRedis(tmp / "redis", password=PASSWORD).start()
    s = Stack(
        tmp,
        redis=redis,
        env={
            # One key configured pre-hashed: plaintext need never sit in config.
            "GENQ_API_KEYS": f'["{KEY_A}", "sha256:{_sha(KEY_B)}", "{KEY_RATE}"]',
            "GENQ_ADMIN_KEYS": f'["{ADMIN}"]',
            "GENQ_RATE_LIMIT_PER_S": str(RATE),
        },
    )
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "2")
        yield s
    finally:
        s.stop()
        redis.stop()


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


# -- 14. API keys --------------------------------------------------------------------------------


def test_401_without_or_with_a_wrong_key(stack: Stack) -> None:
    with stack.client() as c:
        assert c.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
        r = c.post("/v1/jobs", json={"prompt": "x"}, headers=bearer("nope"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert c.get("/v1/jobs").status_code == 401


def test_jobs_are_visible_only_to_their_key(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 2}}, headers=bearer(KEY_A))
        jid = job["id"]
    with stack.client(headers=bearer(KEY_A)) as a, stack.client(headers=bearer(KEY_B)) as b:
        assert wait_job(a, jid)["status"] == "succeeded"
        for method, path in (
            ("GET", f"/v1/jobs/{jid}"),
            ("GET", f"/v1/jobs/{jid}/events"),
            ("POST", f"/v1/jobs/{jid}/cancel"),
        ):
            r = b.request(method, path)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        assert jid in [j["id"] for j in a.get("/v1/jobs").json()]
        assert jid not in [j["id"] for j in b.get("/v1/jobs").json()]
    with stack.client(headers=bearer(ADMIN)) as adm:  # an admin key sees any job
        assert adm.get(f"/v1/jobs/{jid}").status_code == 200


def test_per_key_rate_limit(stack: Stack) -> None:
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, headers=bearer(KEY_RATE)) as ac:
            rs = await asyncio.gather(*(ac.get("/v1/jobs") for _ in range(4 * RATE)))
            return [r.status_code for r in rs]

    # Start at the top of a second so the burst lands in one window.
    time.sleep(1 - (time.time() % 1) + 0.02)
    codes = asyncio.run(burst())
    assert codes.count(429) >= RATE and codes.count(200) <= RATE + 1, codes
    with stack.client() as c:  # another key is not limited by this one's burst
        assert c.get("/v1/jobs", headers=bearer(KEY_A)).status_code == 200
        time.sleep(1.1)
        r = c.get("/v1/jobs", headers=bearer(KEY_RATE))
        assert r.status_code == 200


def test_rate_limited_answer_has_retry_after(stack: Stack) -> None:
    with stack.client(headers=bearer(KEY_RATE)) as c:
        time.sleep(1 - (time.time() % 1) + 0.02)
        rs = [c.get("/v1/jobs") for _ in range(RATE + 2)]
    limited = [r for r in rs if r.status_code == 429]
    assert limited and all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert limited[0].json()["error"]["code"] == "rate_limited"


def test_require_admin_guards_admin_routes(redis_server: LocalRedis) -> None:
    settings = Settings(redis_url=redis_server.url, api_keys=[KEY_A], admin_keys=[ADMIN])  # type: ignore[call-arg]
    app = create_app(settings)

    @app.get("/v1/admin/_probe", dependencies=[Depends(require_admin)])
    async def probe() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as c:
        assert c.get("/v1/admin/_probe").status_code == 401
        assert c.get("/v1/admin/_probe", headers=bearer(KEY_A)).status_code == 403
        assert c.get("/v1/admin/_probe", headers=bearer(ADMIN)).json() == {"ok": True}


# -- 15. nothing private in logs or errors ---------------------------------------------------------


def test_prompts_outputs_and_secrets_stay_out_of_logs(stack: Stack) -> None:
    with stack.client(headers=bearer(KEY_A)) as c:
        job = submit(c, {"prompt": PROMPT, "params": {"max_tokens": 12}})
        rec = wait_job(c, job["id"])
        chat = submit(c, {"messages": [{"role": "user", "content": PROMPT}]})
        wait_job(c, chat["id"])
    assert rec["status"] == "succeeded"
    time.sleep(0.5)
    logs = stack.worker_logs() + (stack.api.log_text() if stack.api else "")
    assert job["id"] in logs  # the job is logged, by id ...
    assert PROMPT not in logs  # ... but not its prompt
    assert rec["text"] not in logs  # ... nor its output
    for secret in (PASSWORD, KEY_A, KEY_B, KEY_RATE, ADMIN):
        assert secret not in logs, secret


def test_redis_outage_error_leaks_no_secret(stack: Stack) -> None:
    stack.redis.stop()
    try:
        with stack.client(headers=bearer(KEY_A)) as c:
            r = c.post("/v1/jobs", json={"prompt": "x"})
            ready = c.get("/readyz")
    finally:
        stack.redis.start()
    assert r.status_code == 503 and ready.status_code == 503
    for body in (r.text, ready.text):
        assert PASSWORD not in body and "Traceback" not in body
    time.sleep(0.5)
    logs = stack.worker_logs() + (stack.api.log_text() if stack.api else "")
    assert PASSWORD not in logs
    stack.wait_http("/readyz", timeout=20)


# -- rediss:// --------------------------------------------------------------------------------


def _tls_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not on PATH: cannot make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--dir", str(tmp), "--appendonly", "yes", "--save", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(0.5)
    if proc.poll() is not None:
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        pytest.skip(f"redis-server was built without TLS support: {out.strip()[-200:]}")
    return proc, port, cert


def test_rediss_tls_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, port, cert = _tls_redis(tmp_path)
    # Every client (API, worker, this test) verifies the server against this CA file.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    url = f"rediss://127.0.0.1:{port}/0"

    class _TlsRedis(LocalRedis):  # Stack only needs .url and .stop from it
        def __init__(self) -> None:
            self.port, self.password, self.proc = port, None, None

        @property
        def url(self) -> str:
            return url

        def stop(self, *, kill: bool = False) -> None:
            return None

    s = Stack(tmp_path / "tls", redis=_TlsRedis())
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "2")
        with s.client() as c:
            job = submit(c, {"prompt": "over tls", "params": {"max_tokens": 4}})
            assert wait_job(c, job["id"], timeout=30)["status"] == "succeeded"
            assert c.get("/readyz").status_code == 200
    finally:
        s.stop()
        proc.terminate()
        proc.wait(10)
