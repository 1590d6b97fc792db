from __future__ import annotations

import os
import tempfile

import pytest

from tests.support import EntryFactory

# Nodes started by the tests register their admin tokens here, not in the
# user's runtime directory (loomdb.node.runtime); subprocesses inherit it.
os.environ.setdefault("LOOMDB_RUNTIME_DIR", tempfile.mkdtemp(prefix="loomdb-test-runtime-"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async tests run on asyncio and on trio (py-libp2p is trio-only)."""
    return str(request.param)


@pytest.fixture
def make_entry() -> EntryFactory:
    return EntryFactory()
