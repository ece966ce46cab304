"""The files that ship the project: the Dockerfile, the compose stack and the CI workflows.

No Docker engine runs here, so they are linted and cross-checked against the code instead."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from services import unavailable

from marketfeed.app import create_app
from marketfeed.config import Role, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yml"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_pass_actionlint() -> None:
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marketfeed" / "bin" / "actionlint"
    )
    actionlint = shutil.which("actionlint") or (str(cache) if cache.exists() else None)
    if actionlint is None:
        unavailable("actionlint")
        raise AssertionError("unreachable")
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    result = subprocess.run([actionlint, *workflows], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_sets_only_settings_the_server_understands() -> None:
    services = compose()["services"]
    fields = set(Settings.model_fields)
    seen = 0
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if not key.startswith("MARKETFEED_"):
                continue
            seen += 1
            field = key.removeprefix("MARKETFEED_").lower()
            assert field in fields, f"{name}: {key} is not a setting"
            Settings(**{field: value})  # and its value is valid
    assert seen >= 10
    roles = {
        s["environment"]["MARKETFEED_ROLE"]
        for s in services.values()
        if "MARKETFEED_ROLE" in (s.get("environment") or {})
    }
    assert roles == {Role.ENGINE.value, Role.EDGE.value}


def test_engine_and_edges_describe_the_same_market() -> None:
    # An edge answers /model and /symbols from its own settings: they must match the engine's.
    services = compose()["services"]
    market = ("MARKETFEED_SEED", "MARKETFEED_UNIVERSE", "MARKETFEED_SCHEME", "MARKETFEED_JUMPS")
    views = {
        name: {k: v for k, v in (services[name].get("environment") or {}).items() if k in market}
        for name in ("engine", "edge1", "edge2")
    }
    assert views["engine"] == views["edge1"] == views["edge2"], views


def test_compose_publishes_only_the_edges() -> None:
    services = compose()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"edge1", "edge2"}
    for name in ("engine", "edge1", "edge2"):
        conditions = services[name]["depends_on"]
        assert {c["condition"] for c in conditions.values()} == {"service_healthy"}
        assert all("healthcheck" in services[dep] for dep in conditions)


def test_image_runs_as_non_root_and_checks_a_real_route() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    health = re.search(r"HEALTHCHECK .*?(http://127\.0\.0\.1:\S*?(/\w+))", text, flags=re.DOTALL)
    assert health is not None
    assert health.group(2) in create_app(Settings()).openapi()["paths"]
    assert "EXPOSE 8000" in text


@pytest.mark.parametrize("path", ["ci.yml", "pages.yml"])
def test_workflows_run_the_readme_command_and_use_oidc(path: str) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / path).read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    commands = " ".join(str(s.get("run", "")) for s in steps)
    if path == "ci.yml":
        assert "bash .ci/run" in commands
        assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec make test")
    else:
        assert workflow["permissions"]["id-token"] == "write"
        assert "aws s3 sync public/" in commands
        assert "--delete" in commands
        assert "create-invalidation" in commands
        assert "secrets." not in (ROOT / ".github" / "workflows" / path).read_text()
