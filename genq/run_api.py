"""`genq api`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse

from common.logs import setup_logging
from common.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="genq api",
        description="Serve the genq HTTP API. Stateless: run as many as you like behind a "
        "load balancer; all state is in Redis (REDIS_URL).",
        epilog="example: REDIS_URL=redis://:secret@redis:6379/0 genq api --port 8000",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = p.parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level)
    import uvicorn

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
