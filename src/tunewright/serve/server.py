"""`tunewright serve`: load the models, start the engine, and run the HTTP API with uvicorn.

Front doors: `serve(sources, settings)` blocks until interrupted (the CLI); `start_server(...)`
runs the same server on a background thread and returns its URL (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass

from rich.console import Console

from tunewright.errors import TunewrightError
from tunewright.inference.engine import Engine
from tunewright.serve.app import create_app
from tunewright.serve.registry import ModelSet, load_models
from tunewright.serve.settings import ServeSettings


def check_bind(settings: ServeSettings) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if _is_loopback(settings.host) or settings.api_key:
        return
    raise TunewrightError(
        f"refusing to bind to {settings.host} without an API key: anyone who can reach it could use the "
        "model. Set TUNEWRIGHT_API_KEY (or --api-key), or bind to 127.0.0.1."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass
class RunningServer:
    url: str  # e.g. http://127.0.0.1:8000 (the OpenAI base_url is url + "/v1")
    models: ModelSet
    engine: Engine
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.engine.close()


def listen(settings: ServeSettings) -> socket.socket:
    """Bind the socket ourselves, so port 0 works and the chosen port is known before serving."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a response written in parts waits on the client's delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        sock.close()
        raise TunewrightError(
            f"cannot listen on {settings.host}:{settings.port}: {e.strerror}"
        ) from None
    sock.listen(2048)
    return sock


def _uvicorn(models: ModelSet, settings: ServeSettings):
    try:
        import uvicorn
    except ImportError:
        raise TunewrightError(
            "serving needs fastapi and uvicorn: pip install fastapi uvicorn"
        ) from None
    check_bind(settings)
    engine = Engine(
        models.model,
        models.tokenizer,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        adapters=models.has_adapters,
    ).start()
    app = create_app(models, engine, settings)
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=30, access_log=False)
    return uvicorn.Server(config), engine


def start_server(models: ModelSet, settings: ServeSettings) -> RunningServer:
    """Serve already-loaded models on a background thread; returns once the server accepts requests."""
    check_bind(settings)
    sock = listen(settings)
    server, engine = _uvicorn(models, settings)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tunewright-http", daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            engine.close()
            raise TunewrightError("the HTTP server failed to start")
        thread.join(timeout=0.05)
    host, port = sock.getsockname()[:2]
    return RunningServer(f"http://{_url_host(host)}:{port}", models, engine, server, thread)


def serve(
    sources: list[str],
    settings: ServeSettings,
    *,
    adapters: dict[str, str] | None = None,
    console: Console | None = None,
) -> None:
    """Load `sources` (a model or run folders) and serve them until interrupted."""
    console = console or Console(stderr=True)
    check_bind(settings)  # before the slow model load
    sock = listen(settings)
    models = load_models(sources, adapters, precision=settings.precision)
    server, engine = _uvicorn(models, settings)
    host, port = sock.getsockname()[:2]
    base = f"http://{_url_host(host)}:{port}/v1"
    console.print(
        f"serving {', '.join(models.served)} at {base}"
        + (" (API key required)" if settings.api_key else "")
    )
    console.print(
        f"  e.g. OpenAI(base_url='{base}', api_key='{'<key>' if settings.api_key else 'none'}')"
    )
    logging.getLogger("tunewright.serve").setLevel(logging.INFO)
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
