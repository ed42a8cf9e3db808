"""Every path in the data directory, built here and nowhere else.

secret.key  bootstrap-token  redis/                     service files (never bound into a step)
workspaces/<ws>.json  configurations/<cfg>.json  api_keys/<key>.json  docker_images/<img>.json
runners/<rnr>.json
audit/<ws>.ndjson  artifacts/…                           (see ade.records.artifacts)
runs/<run>/run.json  runs/<run>/logs/events.ndjson  runs/<run>/{work,inputs,outputs}/
builds/<build>/build.json  builds/<build>/logs/events.ndjson  builds/<build>/{env,source}/  READY
caches/<ws>/<cfg>/<step>/<key hash>/{current,v-<ulid>/}  caches/<ws>/{.tmp,.trash}/  caches/<ws>/.lock
                                                         (see ade.execution.caches; never bound into a step)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOG_NAME = "events.ndjson"
RUN_RECORD = "run.json"
BUILD_RECORD = "build.json"


def workspaces_dir(data_dir: Path) -> Path:
    return data_dir / "workspaces"


def configurations_dir(data_dir: Path) -> Path:
    return data_dir / "configurations"


def api_keys_dir(data_dir: Path) -> Path:
    return data_dir / "api_keys"


def docker_images_dir(data_dir: Path) -> Path:
    return data_dir / "docker_images"


def runners_dir(data_dir: Path) -> Path:
    return data_dir / "runners"


def runner_record(data_dir: Path, runner_id: str) -> Path:
    return runners_dir(data_dir) / f"{runner_id}.json"


def workspace_record(data_dir: Path, workspace_id: str) -> Path:
    return workspaces_dir(data_dir) / f"{workspace_id}.json"


def configuration_record(data_dir: Path, configuration_id: str) -> Path:
    return configurations_dir(data_dir) / f"{configuration_id}.json"


def api_key_record(data_dir: Path, key_id: str) -> Path:
    return api_keys_dir(data_dir) / f"{key_id}.json"


def docker_image_record(data_dir: Path, image_id: str) -> Path:
    return docker_images_dir(data_dir) / f"{image_id}.json"


def secret_key(data_dir: Path) -> Path:
    return data_dir / "secret.key"


def bootstrap_token(data_dir: Path) -> Path:
    return data_dir / "bootstrap-token"


def redis_dir(data_dir: Path) -> Path:
    return data_dir / "redis"


def redis_password(data_dir: Path) -> Path:
    return data_dir / "redis-password"


def audit_dir(data_dir: Path) -> Path:
    return data_dir / "audit"


def artifacts_dir(data_dir: Path) -> Path:
    return data_dir / "artifacts"


def runs_dir(data_dir: Path) -> Path:
    return data_dir / "runs"


def builds_dir(data_dir: Path) -> Path:
    return data_dir / "builds"


def caches_dir(data_dir: Path) -> Path:
    return data_dir / "caches"


@dataclass(frozen=True, slots=True)
class RunDir:
    root: Path

    @property
    def record(self) -> Path:
        return self.root / RUN_RECORD

    @property
    def log(self) -> Path:
        return self.root / "logs" / LOG_NAME

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def create(self) -> None:
        for directory in (self.log.parent, self.work, self.inputs, self.outputs):
            directory.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True, slots=True)
class BuildDir:
    root: Path

    @property
    def record(self) -> Path:
        return self.root / BUILD_RECORD

    @property
    def log(self) -> Path:
        return self.root / "logs" / LOG_NAME

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def source_archive(self) -> Path:
        return self.root / "source.archive"

    @property
    def ready_marker(self) -> Path:
        return self.root / "READY"


def run_dir(data_dir: Path, run_id: str) -> RunDir:
    return RunDir(runs_dir(data_dir) / run_id)


def build_dir(data_dir: Path, build_id: str) -> BuildDir:
    return BuildDir(builds_dir(data_dir) / build_id)


@dataclass(frozen=True, slots=True)
class WorkspaceCaches:
    """A workspace's step caches (README "Caches"): one directory per configuration, step and key, each
    holding complete versions (`v-<ulid>/`) and a `current` file naming the one a restore reads. Saves are
    written in `.tmp/` first; deleted versions pass through `.trash/`; `.lock` serialises evictions."""

    root: Path

    def entry(self, configuration_id: str, step: str, key_hash: str) -> Path:
        return self.root / configuration_id / step / key_hash

    @property
    def staging(self) -> Path:
        return self.root / ".tmp"

    @property
    def trash(self) -> Path:
        return self.root / ".trash"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def workspace_caches(data_dir: Path, workspace_id: str) -> WorkspaceCaches:
    return WorkspaceCaches(caches_dir(data_dir) / workspace_id)
