"""``thaw app``: a local web app to collect labelled images, fine-tune, inspect and try a model in the browser.

Install with ``pip install 'thaw[app]'`` (FastAPI, uvicorn, python-multipart). The server listens on 127.0.0.1 by
default; the page's assets ship inside the package and need no network.

Example:
    >>> from thaw.app import serve
    >>> serve("thaw-app", port=8765, open_browser=False)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import threading
import webbrowser
from typing import TYPE_CHECKING

from thaw.errors import ThawError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["AppDependencyError", "DEFAULT_PORT", "require_app_dependencies", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
_REQUIRED = ("fastapi", "uvicorn", "multipart")


class AppDependencyError(ThawError):
    """The optional web-app dependencies are not installed."""


def require_app_dependencies() -> None:
    """Raise AppDependencyError naming the extra to install when FastAPI, uvicorn or python-multipart is missing."""
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join("python-multipart" if m == "multipart" else m for m in missing)
        raise AppDependencyError(f"thaw app needs {names}: pip install 'thaw[app]'")


def create_app(data_dir: str | os.PathLike[str], **options: object) -> FastAPI:
    """Build the FastAPI application over ``data_dir``; see :func:`thaw.app.server.create_app` for options."""
    require_app_dependencies()
    from thaw.app.server import create_app as _create

    return _create(os.fspath(data_dir), **options)  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this computer."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    data_dir: str | os.PathLike[str] = "thaw-app",
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    open_browser: bool = True,
) -> None:
    """Serve the app until Ctrl-C; a run that is training then stops and stays resumable.

    Args:
        data_dir: folder for projects, images and runs (created when missing).
        host: address to listen on; anything but a loopback address exposes the app to the network.
        port: TCP port.
        open_browser: open the page in the default browser once the server listens.

    Raises:
        AppDependencyError: ``thaw[app]`` is not installed.
    """
    require_app_dependencies()
    import uvicorn

    local = is_loopback(host)
    if not local:
        log.warning(
            "thaw app listens on %s: anyone who can reach this computer can upload images, train and download "
            "models (there is no login); importing folders by path is turned off",
            host,
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown if ':' not in shown else f'[{shown}]'}:{port}/"
    trusted = [h for h in ("127.0.0.1", "localhost", "[::1]", "::1", host) if h] if local else None
    app = create_app(data_dir, allow_folder_import=local, trusted_hosts=trusted)
    log.info("thaw app: %s (data in %s); Ctrl-C stops it", url, os.path.abspath(data_dir))
    if open_browser:
        # after uvicorn has had a moment to bind the port
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
