"""HTTP serving: a FastAPI app over one Predictor (one base, many adapters), micro-batched, with a web page.

Requests wait a few milliseconds in a queue; the ones that arrive together are merged per adapter into one
`Predictor.predict` call (which sorts by length and pads per batch). All model work (prediction, loading and
removing adapters) runs on one worker thread, so the event loop stays free for `/healthz` and new requests,
and a hot swap never interleaves with a batch: every answer names the adapter revision that produced it.

Modules, in the order a request meets them: `runner` (the process), `guard` (refusals before FastAPI),
`app` (routes and errors), `schemas` (bodies and limits), `batcher` (the queue in front of the model).
"""

from __future__ import annotations

from ..errors import UserError

try:  # the serve extra is optional
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
except ImportError as e:
    raise UserError("serving needs the serve extra: pip install 'weibo-sentiment[serve]'") from e

from .app import AppSettings, create_app, public_model_name
from .batcher import MicroBatcher
from .guard import LOOPBACK_HOSTS, exposure_warning, is_loopback, resolve_adapter_path
from .runner import API_KEY_ENV, serve

__all__ = [
    "API_KEY_ENV", "LOOPBACK_HOSTS", "AppSettings", "MicroBatcher", "create_app", "exposure_warning",
    "is_loopback", "public_model_name", "resolve_adapter_path", "serve",
]
