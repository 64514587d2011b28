"""The service images (deploy/docker/<service>.Dockerfile): their structure, and their builder
stage replayed here with uv (no Docker engine runs here), to show that the lock file alone
installs the dependencies and that the service then runs from the environment it built."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    REPO,
    SERVICES,
    SettingsFromEnv,
    dockerfile,
    env_prefix,
)

pytestmark = pytest.mark.deploy

Instruction = dict[str, Any]


def stages(service: str) -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per build stage, comments left out."""
    found: list[list[Instruction]] = []
    for instruction in dockerfile(service).structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found and instruction["instruction"] != "COMMENT":
            found[-1].append(instruction)
    return found


def values(stage: list[Instruction], kind: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == kind]


def context_copies(stage: list[Instruction]) -> list[str]:
    """COPY instructions that take from the build context (not from another stage or image)."""
    return [v for v in values(stage, "COPY") if not v.startswith("--from")]


def workspace_dependencies(service: str) -> set[str]:
    """The directories of the workspace members the service depends on."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = {Path(member).name: member for member in root["tool"]["uv"]["workspace"]["members"]}
    project = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())
    requirements = project["project"]["dependencies"]
    names = {re.split(r"[\s<>=~!\[;]", r, maxsplit=1)[0] for r in requirements}
    return {members[name] for name in names if name in members}


@pytest.mark.parametrize("service", SERVICES)
def test_a_slim_runtime_stage_runs_the_service_as_a_non_root_user(service: str) -> None:
    runtime = stages(service)[-1]
    assert dockerfile(service).parent_images == ["python:3.11-slim-bookworm"] * 2
    assert values(runtime, "COPY") == ["--from=builder /app /app"], "only the built tree"

    users = values(runtime, "USER")
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "numeric, so that Kubernetes' runAsNonRoot can check it"
    assert int(uid) != 0

    assert json.loads(values(runtime, "ENTRYPOINT")[-1]) == ["python", "-m", service]
    assert json.loads(values(runtime, "CMD")[-1]) == ["serve"]
    healthcheck = values(runtime, "HEALTHCHECK")[-1]
    assert "/health/ready" in healthcheck
    assert f"{env_prefix(service)}HTTP_PORT" in healthcheck


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_serves_on_all_interfaces_at_the_port_it_exposes(
    service: str, settings_from_env: SettingsFromEnv
) -> None:
    settings: Any = settings_from_env(service, {})
    assert settings.http_host == "0.0.0.0"  # noqa: S104 - a container listens on all its interfaces
    assert values(stages(service)[1], "EXPOSE") == [str(settings.http_port)]


@pytest.mark.parametrize("service", SERVICES)
def test_the_builder_installs_from_the_lock_file_what_the_service_needs(service: str) -> None:
    builder, _ = stages(service)
    runs = " ".join(values(builder, "RUN"))
    assert f"uv sync --frozen --no-dev --no-install-workspace --package {service}" in runs
    assert f"uv sync --frozen --no-dev --package {service}" in runs

    copied = {source for v in context_copies(builder) for source in v.split()[:-1]}
    needed = {f"services/{service}", *workspace_dependencies(service)}
    assert needed <= copied, f"the image lacks workspace packages: {sorted(needed - copied)}"

    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied:
        assert source.split("/")[0] in allowed, f".dockerignore keeps {source} out of the context"


def stage_env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values(stage, "ENV"):
        for pair in shlex.split(value):
            name, _, setting = pair.partition("=")
            env[name] = setting
    return env


def replay_copy(value: str, app: Path) -> None:
    *sources, destination = value.split()
    for source in sources:
        origin = REPO / source
        target = app / destination / origin.name if destination.endswith("/") else app / destination
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, target)


def replay_run(value: str, app: Path, env: dict[str, str]) -> None:
    # BuildKit's --mount flags add a cache, or bind files that are placed here by hand.
    command = re.sub(r"--mount=\S+\s*", "", value)
    subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=app, env=env, check=True)


@pytest.mark.parametrize("service", SERVICES)
def test_the_builder_stage_replayed_with_uv_gives_a_runnable_service(
    service: str, tmp_path: Path
) -> None:
    builder, runtime = stages(service)
    app = tmp_path / "app"
    app.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        **{name: value.replace("/app", str(app)) for name, value in stage_env(builder).items()},
        # The image's interpreter is /usr/local/bin/python3.11; here, the one this venv is from.
        "UV_PYTHON": str(Path(sys.executable).resolve()),
        # Compiling bytecode only makes the image start faster; here it would only take time.
        "UV_COMPILE_BYTECODE": "0",
    }
    for instruction in builder:
        value = instruction["value"]
        if instruction["instruction"] == "COPY" and not value.startswith("--from"):
            replay_copy(value, app)
        elif instruction["instruction"] == "RUN":
            # The dependency layer sees only what its bind mounts give it.
            bound = re.findall(r"--mount=type=bind,source=([^,]+),target=([^\s,]+)", value)
            for source, target in bound:
                shutil.copy2(REPO / source, app / target)
            replay_run(value, app, env)
            for _, target in bound:
                (app / target).unlink()

    python = app / ".venv" / "bin" / "python"
    run_env = {"PATH": f"{python.parent}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    entrypoint = json.loads(values(runtime, "ENTRYPOINT")[-1])
    shown = subprocess.run(
        [str(python), *entrypoint[1:], "--help"], env=run_env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "migrate" in shown.stdout

    # The migrations resolve inside the built tree, and the environment holds this service
    # alone: no other service, no development tool.
    others = [name for name in (*SERVICES, "devstack", "pytest") if name != service]
    probe = (
        f"import importlib.util, {service}.adapters.schema as schema\n"
        f"assert schema.MIGRATIONS.is_dir(), schema.MIGRATIONS\n"
        f"assert schema.MIGRATIONS.is_relative_to({str(app)!r}), schema.MIGRATIONS\n"
        f"present = [m for m in {others!r} if importlib.util.find_spec(m)]\n"
        f"assert not present, present\n"
    )
    checked = subprocess.run(
        [str(python), "-c", probe], env=run_env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
