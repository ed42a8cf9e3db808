"""Artifacts against a real Redis: content addressing, dedup, limits, workspace isolation, safe names."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.core import keys
from ade.core.errors import Invalid, NotFound, TooLarge
from ade.records.artifacts import Artifact, ArtifactStore, safe_input_name, sanitize_filename

pytestmark = pytest.mark.anyio


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis, tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(redis, tmp_path)


def new_ws() -> str:
    return f"ws_{uuid.uuid4().hex}"


async def stream(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def key_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "artifacts" / "sha256").rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return list((root / "artifacts" / "tmp").iterdir())


def index_lines(root: Path, ws: str) -> list[bytes]:
    path = root / "artifacts" / "index" / f"{ws}.ndjson"
    return path.read_bytes().splitlines() if path.exists() else []


async def test_save_streams_hashes_and_stores_the_file_once(store: ArtifactStore, tmp_path: Path) -> None:
    ws = new_ws()
    artifact = await store.save(
        ws, stream([b"hello ", b"world"]), max_bytes=1000, content_type="text/plain", filename="hi.txt"
    )
    assert artifact.key == key_of(b"hello world")
    assert (artifact.workspace_id, artifact.size, artifact.content_type, artifact.filename) == (
        ws,
        11,
        "text/plain",
        "hi.txt",
    )
    digest = artifact.key.removeprefix("sha256:")
    assert store.path_of(artifact.key) == tmp_path / "artifacts" / "sha256" / digest[:2] / digest
    assert store.path_of(artifact.key).read_bytes() == b"hello world"
    assert temp_files(tmp_path) == []
    assert await store.get(ws, artifact.key) == artifact


async def test_same_bytes_same_workspace_returns_the_original_record(
    store: ArtifactStore, redis: Redis, tmp_path: Path
) -> None:
    ws = new_ws()
    first = await store.save(ws, stream([b"data"]), max_bytes=100, content_type="text/plain", filename="one")
    inode = store.path_of(first.key).stat().st_ino
    again = await store.save(
        ws, stream([b"da", b"ta"]), max_bytes=100, content_type="application/x-other", filename="two"
    )
    assert again == first  # same key, filename, content type, created_at
    assert store.path_of(first.key).stat().st_ino == inode  # the stored file was not rewritten
    assert len(stored_files(tmp_path)) == 1
    assert len(index_lines(tmp_path, ws)) == 1
    assert await redis.hlen(keys.workspace_artifacts(ws)) == 1
    assert temp_files(tmp_path) == []


async def test_same_bytes_other_workspace_adds_only_a_record(store: ArtifactStore, tmp_path: Path) -> None:
    ws_a, ws_b = new_ws(), new_ws()
    a = await store.save(ws_a, stream([b"shared"]), max_bytes=100, content_type="text/plain", filename="a")
    b = await store.save(ws_b, stream([b"shared"]), max_bytes=100, content_type="text/csv", filename="b")
    assert a.key == b.key
    assert stored_files(tmp_path)[0].stat().st_mode & 0o777 == 0o444
    assert (b.workspace_id, b.filename, b.content_type) == (ws_b, "b", "text/csv")
    assert len(stored_files(tmp_path)) == 1
    assert len(index_lines(tmp_path, ws_a)) == len(index_lines(tmp_path, ws_b)) == 1
    assert (await store.get(ws_a, a.key)).filename == "a"
    assert (await store.get(ws_b, a.key)).filename == "b"


async def test_limit_hit_mid_stream_stops_reading_and_leaves_nothing(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ws = new_ws()
    consumed: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            consumed.append(i)
            yield b"x" * 40

    with pytest.raises(TooLarge) as caught:
        await store.save(ws, chunks(), max_bytes=100, content_type="text/plain", filename=None)
    assert caught.value.code == "artifact_too_large"
    assert "limit of 100 bytes" in caught.value.message
    assert consumed == [0, 1, 2]  # the third chunk crossed the limit: no more were read
    assert temp_files(tmp_path) == []
    assert stored_files(tmp_path) == []
    assert index_lines(tmp_path, ws) == []


async def test_exactly_the_limit_is_accepted(store: ArtifactStore) -> None:
    artifact = await store.save(
        new_ws(), stream([b"x" * 60, b"x" * 40]), max_bytes=100, content_type="text/plain", filename=None
    )
    assert artifact.size == 100


async def test_empty_upload_is_invalid_and_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    ws = new_ws()
    with pytest.raises(Invalid) as caught:
        await store.save(ws, stream([b"", b""]), max_bytes=100, content_type="text/plain", filename=None)
    assert caught.value.code == "empty_artifact"
    assert temp_files(tmp_path) == []
    assert stored_files(tmp_path) == []


async def test_failing_stream_leaves_no_temp_file(store: ArtifactStore, tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.save(new_ws(), broken(), max_bytes=100, content_type="text/plain", filename=None)
    assert temp_files(tmp_path) == []
    assert stored_files(tmp_path) == []


async def test_other_workspace_cannot_see_an_artifact(store: ArtifactStore) -> None:
    owner, other = new_ws(), new_ws()
    artifact = await store.save(owner, stream([b"secret"]), max_bytes=100, content_type="x/y", filename=None)
    with pytest.raises(NotFound) as caught:
        await store.get(other, artifact.key)
    assert caught.value.code == "artifact_not_found"
    missing = key_of(b"never uploaded")
    with pytest.raises(NotFound) as caught_missing:
        await store.get(owner, missing)
    assert str(caught.value).replace(artifact.key, "K") == str(caught_missing.value).replace(missing, "K")
    with pytest.raises(NotFound):
        await store.copy_into(other, artifact.key, Path("/nonexistent/never-written"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "sha1:" + "a" * 64,
        "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256:../../" + "a" * 58,
    ],
)
async def test_malformed_keys_are_invalid(store: ArtifactStore, key: str) -> None:
    with pytest.raises(Invalid) as caught:
        await store.get(new_ws(), key)
    assert caught.value.code == "invalid_artifact_key"
    with pytest.raises(Invalid):
        store.path_of(key)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("report.pdf", "report.pdf"),
        ("dir/sub/report.pdf", "report.pdf"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\doc.txt", "doc.txt"),
        ("../../x", "x"),
        ("a\x00b.txt", "ab.txt"),
        ("bad\r\nname", "badname"),
        ("  spaced.txt  ", "spaced.txt"),
        ("..", None),
        ("dir/", None),
        ("\x00", None),
        ("", None),
    ],
)
def test_filename_is_reduced_to_a_safe_base_name(given: str | None, expected: str | None) -> None:
    assert sanitize_filename(given) == expected


def test_long_filename_is_cut_to_255_bytes_keeping_the_extension() -> None:
    name = sanitize_filename("a" * 300 + ".tar.gz")
    assert name is not None
    assert len(name.encode()) == 255
    assert name.endswith("a.gz")
    multibyte = sanitize_filename("é" * 200)  # 400 bytes, no extension: never cut inside a character
    assert multibyte == "é" * 127


async def test_save_stores_the_sanitised_filename(store: ArtifactStore) -> None:
    artifact = await store.save(
        new_ws(), stream([b"f"]), max_bytes=10, content_type="text/plain", filename="../x/../evil\x00.sh"
    )
    assert artifact.filename == "evil.sh"


async def test_copy_into_places_a_private_copy(store: ArtifactStore, tmp_path: Path) -> None:
    ws = new_ws()
    artifact = await store.save(ws, stream([b"input data"]), max_bytes=100, content_type="x/y", filename=None)
    destination = tmp_path / "runs" / "run_1" / "inputs" / "nested" / "in.txt"
    await store.copy_into(ws, artifact.key, destination)
    assert destination.read_bytes() == b"input data"
    destination.write_bytes(b"changed by a step")  # writable, and not the stored file
    assert store.path_of(artifact.key).read_bytes() == b"input data"
    assert sorted(p.name for p in destination.parent.iterdir()) == ["in.txt"]  # no temp left


async def test_copy_into_replaces_a_symlink_instead_of_writing_through_it(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ws = new_ws()
    artifact = await store.save(ws, stream([b"new"]), max_bytes=100, content_type="x/y", filename=None)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"untouched")
    destination = tmp_path / "inputs" / "in.txt"
    destination.parent.mkdir()
    destination.symlink_to(victim)
    await store.copy_into(ws, artifact.key, destination)
    assert not destination.is_symlink()
    assert destination.read_bytes() == b"new"
    assert victim.read_bytes() == b"untouched"


async def test_reindex_restores_redis_from_the_index_files(store: ArtifactStore, redis: Redis) -> None:
    ws = new_ws()
    a = await store.save(ws, stream([b"one"]), max_bytes=100, content_type="x/y", filename="1")
    b = await store.save(ws, stream([b"two"]), max_bytes=100, content_type="x/y", filename="2")
    await redis.delete(keys.workspace_artifacts(ws))
    with pytest.raises(NotFound):
        await store.get(ws, a.key)
    assert await store.reindex() == 2
    assert await store.get(ws, a.key) == a
    assert await store.list_artifacts(ws) == [a, b]
    assert await store.reindex() == 0


async def test_malformed_workspace_id_never_becomes_a_path(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(Invalid):
        await store.save("../escape", stream([b"x"]), max_bytes=10, content_type="x/y", filename=None)
    assert not (tmp_path / "artifacts" / "escape.ndjson").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("input.csv", "input.csv"),
        ("data/2024/input.csv", "data/2024/input.csv"),
        ("./a//b/./c", "a/b/c"),
        ("dir/", "dir"),
        ("...", "..."),
        ("a..b", "a..b"),
        ("é" * 127, "é" * 127),
    ],
)
def test_safe_input_name_accepts_and_normalises(name: str, expected: str) -> None:
    assert safe_input_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "./",
        "//",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "/etc/passwd",
        "a\x00b",
        "a\\b",
        "..\\x",
        "a" * 256,
        "é" * 128,  # 256 bytes
        "/".join(["a" * 200] * 6),  # components fine, 1205 bytes in all
        "bad\udcffname",
    ],
)
def test_safe_input_name_rejects(name: str) -> None:
    with pytest.raises(Invalid) as caught:
        safe_input_name(name)
    assert caught.value.code == "invalid_input_name"


def test_safe_input_name_limits_are_inclusive() -> None:
    assert safe_input_name("a" * 255) == "a" * 255
    exactly = "/".join(["a" * 255] * 3 + ["a" * 254, "b"])
    assert len(exactly.encode()) == 1024
    assert safe_input_name(exactly) == exactly
    with pytest.raises(Invalid):
        safe_input_name(exactly + "b")


async def test_concurrent_identical_uploads_agree_on_one_record(store: ArtifactStore, redis: Redis) -> None:
    ws = new_ws()
    results: list[Artifact] = []

    async def upload(name: str) -> None:
        results.append(
            await store.save(
                ws, stream([b"same", b" bytes"]), max_bytes=100, content_type="x/y", filename=name
            )
        )

    async with anyio.create_task_group() as tg:
        for name in ("a", "b", "c", "d"):
            tg.start_soon(upload, name)
    assert len(results) == 4
    assert all(result == results[0] for result in results)
    assert await store.get(ws, results[0].key) == results[0]
    assert await redis.hlen(keys.workspace_artifacts(ws)) == 1
