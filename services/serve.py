"""`fraudctl serve`: the scoring service on uvicorn (uvloop, httptools), one process."""

from __future__ import annotations

from typing import Annotated

import typer

from core.settings import get_settings


def cli(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: settings, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings, 8000).")] = None,
    canary: Annotated[
        float | None, typer.Option(help="Start with this share (%) of cards decided by the challenger.")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs latency under load).")] = False,
) -> None:
    """Serve POST /v1/score with the registry's champion (and the challenger in shadow).

    Needs a trained model (`fraudctl train`) and features (`fraudctl backfill` or
    `fraudctl stream`); without them it still answers, by rules, and /readyz says why.
    Admin calls need the bearer token FRAUD_ADMIN_TOKEN.

    Example: fraudctl serve --port 8000
    """
    import logging

    import uvicorn

    from services.scoring.app import create_app

    # The prediction log reports the broker's state itself; kafka-python would log every
    # refused reconnect at ERROR while the broker is down.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = get_settings()
    updates = {
        k: v
        for k, v in {"serve_host": host, "serve_port": port, "canary_percent": canary}.items()
        if v is not None
    }
    settings = settings.model_copy(update=updates)
    uvicorn.run(
        create_app(settings),
        host=settings.serve_host,
        port=settings.serve_port,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level="info",
    )
