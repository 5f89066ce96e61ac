"""The server process: bind the port, load the model, serve the app with uvicorn until interrupted."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .app import AppSettings, create_app
from .guard import allowed_host_names, exposure_warning

logger = logging.getLogger(__name__)

API_KEY_ENV = "WEIBO_SENTIMENT_API_KEY"
# Idle keep-alive connections are closed after this. It must outlast the clients' own expiry (httpx: 5 s, the
# same as uvicorn's default, so a request sent on a pooled connection could meet the server's close: a load
# test saw one such error in 2,000 requests) and a proxy's idle timeout (often 60 s).
KEEP_ALIVE_S = 65


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), not yet listening; a UserError when it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return sock


def serve(
    adapters: Sequence[str] | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    model: str | Path | None = None,
    use: str | None = None,
    base_model: str | None = None,
    model_dir: str | Path = "models/gpt2-chinese",
    device: str | None = None,
    access_log: bool = True,
    threads: int | None = None,
    calibrated: bool = True,
    allow_other_base: bool = False,
    domain: str | None = None,
    **options,
) -> int:
    """Load the adapters and serve them until interrupted. `options` are AppSettings fields; `allowed_hosts`
    here adds Host names to the ones every server answers to (see guard.allowed_host_names).
    `calibrated=False` serves raw probabilities (`--no-calibration`); `domain` the temperature of that domain of
    the default adapter."""
    import uvicorn

    settings = AppSettings(**options)
    for name, value in (("--max-texts", settings.max_texts), ("--max-chars", settings.max_chars),
                        ("--batch-size", settings.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1")
    api_key = settings.api_key or os.environ.get(API_KEY_ENV) or None
    sock = bind_socket(host, port)  # before loading the model: a busy port fails fast
    with sock:
        _set_threads(threads)
        from ..inference.backends import load_predictor

        predictor = load_predictor(adapters, backend=backend, model=model, base_model=base_model,
                                   model_dir=model_dir, device=device, calibrated=calibrated,
                                   allow_other_base=allow_other_base)
        if use:
            predictor.use(use)
        if domain:
            from ..domains import apply_domain

            apply_domain(predictor, domain)
        hosts = allowed_host_names(host, settings.allowed_hosts or ())
        logger.info("Answering to Host %s", "any name (--allowed-hosts '*')" if hosts is None else ", ".join(hosts))
        app = create_app(predictor, settings, api_key=api_key, allowed_hosts=hosts)
        warning = exposure_warning(host, api_key)
        if warning:
            logger.warning(warning)
        logger.info("Serving %d adapter(s) (%s) on %s  (web page: /, API docs: /docs)",
                    len(predictor.adapters), ", ".join(predictor.adapters), base_url(sock))
        config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5,
                                timeout_keep_alive=KEEP_ALIVE_S)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown: a normal stop
            pass
    logger.info("Server stopped.")
    return 0


def _set_threads(threads: int | None) -> None:
    # One core stays free for the event loop, HTTP and tokenizing. On a busy machine every extra OpenMP
    # thread also costs more than it gives: 2 threads on 2 shared cores ran a tiny model 10x slower than 1.
    import torch

    if threads is None:
        threads = max(1, (os.cpu_count() or 2) - 1)
    if threads < 1:
        raise UserError("--threads must be at least 1")
    torch.set_num_threads(threads)
    logger.info("Model threads: %d", threads)


def base_url(sock: socket.socket) -> str:
    """http://HOST:PORT of a bound socket, IPv6 hosts in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
