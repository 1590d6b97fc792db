"""The HTTP API: a Starlette app over a :class:`loomdb.documents.Database`."""

from loomdb.api.app import create_app

__all__ = ["create_app"]
