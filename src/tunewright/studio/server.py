"""`tunewright studio`: one process serving the base model and every finished job's adapter
(`serve`'s app and engine), the fine-tuning jobs API and the job runner.

Front doors, as `serve` has them: `studio(settings)` blocks until interrupted (the CLI);
`start_studio(settings)` runs the same server on a background thread and returns (tests).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from rich.console import Console

from tunewright.errors import TunewrightError
from tunewright.inference.engine import Engine
from tunewright.serve.app import create_app
from tunewright.serve.registry import load_models
from tunewright.serve.server import check_bind, listen
from tunewright.studio.app import add_jobs_routes
from tunewright.studio.pages import add_pages
from tunewright.studio.pages.auth import is_public
from tunewright.studio.settings import StudioSettings
from tunewright.studio.state import Studio


@dataclass
class RunningStudio:
    url: str  # the OpenAI base_url is url + "/v1"
    studio: Studio
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.studio.close()
        self.studio.engine.close()


def _build(settings: StudioSettings):
    try:
        import uvicorn
    except ImportError:
        raise TunewrightError(
            "the studio needs fastapi, uvicorn and python-multipart: "
            "pip install fastapi uvicorn python-multipart"
        ) from None
    models = load_models([settings.model], precision=settings.precision)
    engine = Engine(
        models.model,
        models.tokenizer,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        adapters=models.has_adapters,
    ).start()
    studio = Studio.open(settings, models, engine)
    app = create_app(models, engine, settings, is_open=is_public)
    add_jobs_routes(app, studio)
    add_pages(app, studio)
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=30, access_log=False)
    return uvicorn.Server(config), studio


def start_studio(settings: StudioSettings) -> RunningStudio:
    """Run a studio on a background thread; returns once it accepts requests."""
    check_bind(settings)
    sock = listen(settings)
    server, studio = _build(settings)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tunewright-studio", daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            studio.close()
            studio.engine.close()
            raise TunewrightError("the HTTP server failed to start")
        thread.join(timeout=0.05)
    host, port = sock.getsockname()[:2]
    return RunningStudio(f"http://{_url_host(host)}:{port}", studio, server, thread)


def studio(settings: StudioSettings, *, console: Console | None = None) -> None:
    """Run the studio until interrupted."""
    console = console or Console(stderr=True)
    check_bind(settings)  # before the slow model load
    sock = listen(settings)
    server, running = _build(settings)
    host, port = sock.getsockname()[:2]
    root = f"http://{_url_host(host)}:{port}"
    base = root + "/v1"
    console.print(
        f"studio at {base} (home {settings.home_dir}; fine-tunes {', '.join(running.base_names())})"
        + (" (API key required)" if settings.api_key else "")
    )
    console.print(
        f"  e.g. OpenAI(base_url='{base}', api_key='{'<key>' if settings.api_key else 'none'}')"
        ".fine_tuning.jobs.create(...)"
    )
    console.print(f"  web app: {root}/" + (" (sign in with the key)" if settings.api_key else ""))
    logging.getLogger("tunewright.studio").setLevel(logging.INFO)
    try:
        server.run(sockets=[sock])
    finally:
        running.close()
        running.engine.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
