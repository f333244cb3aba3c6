"""Fixtures shared by the integration modules (a module that needs another scope defines its own ``store``)."""

from __future__ import annotations

import pytest

from tiebreak.services.store import RedisStore


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A RedisStore on an embedded redis-server of its own, shared by the tests of one module, stopped after."""
    s = RedisStore.open(data_dir=tmp_path_factory.mktemp("redis"))
    yield s
    s.close()
