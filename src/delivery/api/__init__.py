"""The HTTP API. `create_app` is the uvicorn factory: `uvicorn --factory delivery.api:create_app`."""

from delivery.api.app import create_app

__all__ = ["create_app"]
