"""compose/: checked structurally (no Docker engine in CI): the services and their wiring,
healthchecks and start order, the GPU reservation, Redis durability, non-root everywhere,
the Dockerfiles, Prometheus' targets and the .env example.

Variables are interpolated the way compose does (`${VAR:-default}`, `${VAR:?error}`) from
.env.example, and worker commands are parsed with `genq worker`'s own parser."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.main import build_parser

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
SERVICES = {"redis", "api", "worker", "worker-2", "worker-cpu", "flower", "prometheus"}
WORKERS = ("worker", "worker-2", "worker-cpu")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"required variable {name} unset: {arg}")
        return arg if op else ""

    return _VAR.sub(sub, value.replace("$$", "\x00")).replace("\x00", "$")


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return interpolate(raw, env_example() if env is None else env)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-2"]["profiles"] == ["gpu2"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    for name in ("redis", "api", "flower", "prometheus"):
        assert "profiles" not in services[name], name  # always on
    assert env_example()["COMPOSE_PROFILES"] in ("gpu", "cpu")


def test_required_secrets_come_from_env() -> None:
    """Passwords have no defaults: compose refuses to start without them."""
    env = env_example()
    for var in ("REDIS_PASSWORD", "FLOWER_PASSWORD"):
        with pytest.raises(KeyError, match=var):
            load({k: v for k, v in env.items() if k != var})
    text = (COMPOSE / "docker-compose.yml").read_text()
    assert "CHANGE" not in text and "change-me" not in text  # no baked-in secret


def test_redis_is_durable_passworded_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    cmd = redis["command"]

    def opt(name: str) -> str:
        return str(cmd[cmd.index(name) + 1])

    assert cmd[0] == "redis-server"
    assert opt("--appendonly") == "yes"
    assert opt("--maxmemory-policy") == "noeviction"
    assert opt("--requirepass") == env_example()["REDIS_PASSWORD"]
    assert "redis-data:/data" in redis["volumes"]
    # every client's URL carries the password
    password = env_example()["REDIS_PASSWORD"]
    urls = [
        compose["services"]["api"]["environment"]["REDIS_URL"],
        compose["services"]["flower"]["environment"]["CELERY_BROKER_URL"],
        *(compose["services"][w]["environment"]["REDIS_URL"] for w in WORKERS),
    ]
    for url in urls:
        assert url == f"redis://:{password}@redis:6379/0"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_deps(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, svc in services.items():
        hc = svc["healthcheck"]
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
        assert hc.get("interval") and hc.get("retries"), name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            if dep in ("redis", "api"):
                assert cond["condition"] == "service_healthy", (name, dep)
    for name in ("api", "flower", *WORKERS):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # probes hit the endpoints the processes serve
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    for w in WORKERS:
        assert ":8001/readyz" in " ".join(services[w]["healthcheck"]["test"])


def test_gpu_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpus = []
    for name in ("worker", "worker-2"):
        svc = services[name]
        (dev,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        gpus.append(dev["device_ids"])
        assert _bytes(svc["shm_size"]) >= 2**30, "vLLM needs a real /dev/shm"
    assert gpus[0] != gpus[1], "two GPU workers on the same GPU"
    assert services["worker-2"]["command"] == services["worker"]["command"]
    assert "deploy" not in services["worker-cpu"]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_command_health_and_drain(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    cmd = svc["command"]
    assert cmd[0] == "worker"
    args = build_parser().parse_args(cmd[1:])  # the real CLI accepts it
    assert args.health_port == int(svc["environment"]["GENQ_HEALTH_PORT"]) == 8001
    assert _seconds(svc["stop_grace_period"]) >= args.drain_timeout + 10
    assert svc["stop_signal"] == "SIGTERM"
    assert "model-cache:/models" in svc["volumes"]
    if name == "worker-cpu":
        assert args.model is None  # `genq worker` defaults: the embedded SmolLM2
    else:
        served = args.served_model_name or args.model
        assert served == compose["services"]["api"]["environment"]["GENQ_DEFAULT_MODEL"]


def test_flower_has_basic_auth(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["entrypoint"] == ["celery"] and flower["command"][0] == "flower"
    user, _, password = flower["environment"]["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password == env_example()["FLOWER_PASSWORD"]


def test_every_service_runs_non_root(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        user = str(svc["user"]).split(":")[0]
        assert user not in ("", "0", "root"), name


@pytest.mark.parametrize(
    "dockerfile", ["Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cpu"]
)
def test_dockerfiles(dockerfile: str) -> None:
    lines = _instructions(COMPOSE / dockerfile)
    froms = [arg for ins, arg in lines if ins == "FROM"]
    users = [arg for ins, arg in lines if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "must end as non-root"
    last_from = max(i for i, (ins, _) in enumerate(lines) if ins == "FROM")
    last_user = max(i for i, (ins, _) in enumerate(lines) if ins == "USER")
    assert last_user > last_from
    entry = [arg for ins, arg in lines if ins == "ENTRYPOINT"]
    assert entry == ['["genq"]']
    assert any(ins == "HEALTHCHECK" for ins, _ in lines)
    runs = " ".join(arg for ins, arg in lines if ins == "RUN")
    if dockerfile == "Dockerfile.api":
        assert froms[-1].startswith("python:") and "slim" in froms[-1]
        assert re.search(r"pip install \.(\s|&|$)", runs), "the API installs no engine extra"
        assert "cuda" not in " ".join(froms).lower()
        cmd = [arg for ins, arg in lines if ins == "CMD"][-1]
        assert '"api"' in cmd and '"0.0.0.0"' in cmd
    elif dockerfile == "Dockerfile.worker":
        arg_default = next(a for ins, a in lines if ins == "ARG" and a.startswith("VLLM_IMAGE="))
        assert arg_default.split("=", 1)[1].startswith("vllm/vllm-openai:")
        assert froms[-1] == "${VLLM_IMAGE}"
        assert 'install ".[gpu]"' in runs
    else:
        assert 'install ".[cpu]"' in runs and "genq fetch-model" in runs


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    ignored = (COMPOSE.parent / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "compose/.env"):
        assert entry in ignored


def test_prometheus_scrapes_api_workers_and_flower(compose: dict[str, Any]) -> None:
    cfg = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["genq-api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    (sd,) = jobs["genq-worker"]["dns_sd_configs"]
    assert set(sd["names"]) == set(WORKERS) and sd["port"] == 8001
    mount = "./prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in compose["services"]["prometheus"]["volumes"]


def test_env_example_covers_every_variable() -> None:
    used = set(m.group(1) for m in _VAR.finditer((COMPOSE / "docker-compose.yml").read_text()))
    missing = used - set(env_example()) - {"GENQ_VERSION"}
    assert not missing, f"not in .env.example: {missing}"


# -- helpers -----------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        buf += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            ins, _, arg = buf.strip().partition(" ")
            out.append((ins.upper(), arg.strip()))
            buf = ""
    return out


def _bytes(size: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", size.lower())
    assert m, size
    return float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", duration)
    assert m, duration
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


@pytest.mark.parametrize("name", ["api", *WORKERS])
def test_service_environment_is_valid_genq_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GENQ_* values must parse (e.g. list settings are JSON: an empty string crashes)."""
    from common.settings import Settings

    for key in list(os.environ):
        if key.startswith("GENQ_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in compose["services"][name]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.redis_url.startswith("redis://:")
