from __future__ import annotations

import pytest

from tests.support import EntryFactory


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Async tests run on asyncio and on trio (py-libp2p is trio-only)."""
    return str(request.param)


@pytest.fixture
def make_entry() -> EntryFactory:
    return EntryFactory()
