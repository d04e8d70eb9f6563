"""A real etcd for the store tests, one per test module, on a port picked at run time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hwbp.load.etcd import Etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    server = Etcd(tmp_path_factory.mktemp("etcd") / "data").start()
    try:
        yield server
    finally:
        server.stop()
