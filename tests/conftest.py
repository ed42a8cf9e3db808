from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ade.cli.redis_server import RedisServer
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdeSystem]:
    """One real system (Redis, API, worker) shared by the tests that do not break it on purpose."""
    ade = AdeSystem(tmp_path_factory.mktemp("system")).start()
    try:
        yield ade
    finally:
        ade.stop()


@pytest.fixture
async def client(system: AdeSystem) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"{system.base_url}/api/v1", timeout=60.0, headers=headers) as http:
        yield http


@pytest.fixture
def data_dir(system: AdeSystem) -> Path:
    return system.data_dir


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for tests below the HTTP layer (with a password, like every RedisServer: it is in
    `redis_server.url`)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
