"""`skillray serve`: an OpenAI-compatible chat server for a Hugging Face model, on Ray Serve.

The engine (:class:`ChatEngine`) and wire format (:mod:`skillray.serve.protocol`) import no
Ray; :func:`start_server` / :func:`build_app` (Ray Serve + FastAPI) are imported on first use.
"""

from skillray.serve.engine import ChatEngine, Completion, GenerationRequest, SamplingParams, SteeringHook, load_steering_hook

__all__ = [
    "ChatEngine",
    "Completion",
    "GenerationRequest",
    "SamplingParams",
    "ServerInfo",
    "SteeringHook",
    "build_app",
    "deployment_details",
    "deployment_options",
    "load_steering_hook",
    "start_server",
    "stop_server",
]

_LAZY = {"ServerInfo", "build_app", "deployment_details", "deployment_options", "start_server", "stop_server"}


def __getattr__(name):
    if name in _LAZY:
        from skillray.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'skillray.serve' has no attribute {name!r}")
