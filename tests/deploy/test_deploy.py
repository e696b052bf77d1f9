"""deploy/, the Dockerfile and .dockerignore: validated, since nothing here can run them.

There is no container engine or cluster in CI, so every file is checked against what
would read it: the Compose Specification's schema and docker-compose, the Kubernetes
1.29 API schemas (the first release with native sidecar containers on by default) and
the Prometheus Operator's CRD models, promtool and amtool, systemd-analyze, and the
sidecar's own `check-config`. Cross-file tests keep the pieces consistent: ports,
paths, labels, service names, and the PrometheusRule equal to alerts/sidecar-rules.yml.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sidecar import cli
from sidecar.config import Config, ConfigError, load_config, parse_duration
from tests.support.tools import require_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
COMPOSE_GPU_FILE = COMPOSE_DIR / "docker-compose.gpu.yml"
KUBE_DIR = DEPLOY / "kubernetes"
MONITORING_DIR = KUBE_DIR / "monitoring"
SYSTEMD_UNIT = DEPLOY / "systemd" / "inference-sidecar.service"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RULES_FILE = REPO / "alerts" / "sidecar-rules.yml"
AUDIT_SCHEMA_DOC = REPO / "docs" / "audit-schema.md"
TOOL_TIMEOUT_S = 60

# Kubernetes 1.29 is the oldest release the manifests support (native sidecars).
KUBERNETES_VERSION = "1.29.0"
CONTAINER_CONFIG_PATH = "/etc/inference-sidecar/sidecar.yaml"

# Every sidecar config in deploy/ must pass `sidecar check-config` with the environment its
# deployment gives it: credentials, the admin token among them, come from there, never the file.
SIDECAR_CONFIGS = [
    DEPLOY / "example-config.yaml",
    COMPOSE_DIR / "sidecar.yaml",
    DEPLOY / "systemd" / "sidecar.yaml",
    DEPLOY / "docker" / "sidecar.yaml",
]
KUBERNETES_CONFIG = "kubernetes-configmap"  # the ConfigMap's sidecar.yaml, written to a file by the tests

# What an operator's secret store holds where a deployment ships only a placeholder.
STAND_IN_TOKEN = "stand-in-admin-token-0123456789abcdef"
# `docker run -e SIDECAR_ADMIN__TOKEN=...`, as docs/deploy.md says: the image's config binds
# the admin listener to every interface and holds no token.
DOCKER_RUN_ENVIRONMENT = {"SIDECAR_ADMIN__TOKEN": STAND_IN_TOKEN}
# What the operator exports before `docker compose up` (deploy/compose/.env explains).
COMPOSE_SHELL = {"SIDECAR_ADMIN_TOKEN": STAND_IN_TOKEN}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _load_yaml(path: Path) -> Any:
    (document,) = _yaml_documents(path)
    return document


def _deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name.endswith(suffixes))


# --- every file parses ---------------------------------------------------------------


@pytest.mark.parametrize("path", _deploy_files(".yml", ".yaml"), ids=_rel)
def test_every_yaml_file_parses(path: Path) -> None:
    documents = _yaml_documents(path)
    assert documents, f"{_rel(path)}: no YAML document in it"


@pytest.mark.parametrize("path", _deploy_files(".json", ".ndjson"), ids=_rel)
def test_every_json_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ndjson":
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, f"{_rel(path)}: empty"
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                pytest.fail(f"{_rel(path)}:{number}: {exc}")
    else:
        json.loads(text)


def test_there_is_something_to_validate() -> None:
    # A glob that silently matched nothing would make the parse tests vacuous.
    assert len(_deploy_files(".yml", ".yaml")) >= 15
    assert _deploy_files(".ndjson")


# --- sidecar configurations ----------------------------------------------------------


def _kubernetes_sidecar_config(tmp_path: Path) -> Path:
    configmap = next(d for d in _yaml_documents(KUBE_DIR / "configmap.yaml") if d["kind"] == "ConfigMap")
    path = tmp_path / "configmap-sidecar.yaml"
    path.write_text(configmap["data"]["sidecar.yaml"], encoding="utf-8")
    return path


def _deployed_config(config: Path | str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A sidecar config file and the SIDECAR_* environment its deployment runs it with."""
    if config == KUBERNETES_CONFIG:
        return _kubernetes_sidecar_config(tmp_path), _kubernetes_environment()
    assert isinstance(config, Path)
    environments = {
        DEPLOY / "example-config.yaml": {},
        COMPOSE_DIR / "sidecar.yaml": _compose_environment("sidecar"),
        DEPLOY / "systemd" / "sidecar.yaml": {},  # sidecar.env is optional (EnvironmentFile=-)
        DEPLOY / "docker" / "sidecar.yaml": DOCKER_RUN_ENVIRONMENT,
    }
    environment = {name: value for name, value in environments[config].items() if name.startswith("SIDECAR_")}
    return config, environment


_DEPLOYED_CONFIGS = pytest.mark.parametrize(
    "config", [*SIDECAR_CONFIGS, KUBERNETES_CONFIG], ids=lambda p: p if isinstance(p, str) else _rel(p)
)


@_DEPLOYED_CONFIGS
def test_sidecar_configs_pass_check_config(
    config: Path | str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, environment = _deployed_config(config, tmp_path)
    for name in [name for name in os.environ if name.startswith("SIDECAR_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    status = cli.main(["check-config", str(path)])
    captured = capsys.readouterr()
    assert status == 0, f"sidecar check-config {path} with {sorted(environment)}:\n{captured.err}"
    assert ": OK: " in captured.out


@_DEPLOYED_CONFIGS
def test_the_admin_token_comes_from_the_environment_never_a_file(config: Path | str, tmp_path: Path) -> None:
    path, environment = _deployed_config(config, tmp_path)
    admin = (_load_yaml(path) or {}).get("admin") or {}
    assert not admin.get("token"), f"{path}: admin.token is a secret; pass it as SIDECAR_ADMIN__TOKEN"
    deployed = load_config(path, env=environment)
    if deployed.admin.listen.is_loopback:
        return
    assert deployed.admin.token == environment["SIDECAR_ADMIN__TOKEN"]
    # The file alone must not start an open admin port: the sidecar refuses, and says why.
    with pytest.raises(ConfigError, match="SIDECAR_ADMIN__TOKEN"):
        load_config(path, env={})


def _model_keys(model: type, prefix: str = "") -> Iterator[str]:
    """Every key path of a config section; list items of sections as `key[]`, and the
    sections in a mapping by name (limits.tiers, gpu.cost.cloud_prices) as `key.*`."""
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"  # `for` is the field for_
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _model_keys(annotation, path + ".")
            continue
        yield path
        origin, arguments = getattr(annotation, "__origin__", None), getattr(annotation, "__args__", ())
        item, marker = {list: (arguments[:1], "[]."), dict: (arguments[1:], ".*.")}.get(origin, ((), ""))
        if item and isinstance(item[0], type) and issubclass(item[0], BaseModel):
            yield from _model_keys(item[0], path + marker)


def _document_keys(value: Any, sections_by_name: set[str], prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}{key}"
            yield path
            if isinstance(child, dict) and path in sections_by_name:
                for section in child.values():  # the keys are names; each value is a section
                    yield from _document_keys(section, sections_by_name, path + ".*.")
            elif not (isinstance(child, dict) and _is_free_mapping(path)):
                yield from _document_keys(child, sections_by_name, path + ".")
    elif isinstance(value, list):
        for item in value:
            yield from _document_keys(item, sections_by_name, prefix[:-1] + "[].")


def _is_free_mapping(path: str) -> bool:
    # Mappings whose keys are data (label names, attribute names), not config keys.
    return bool(re.search(r"(labels|annotations|headers|resource_attributes|custom)$", path))


def test_example_config_shows_every_key() -> None:
    example = _load_yaml(DEPLOY / "example-config.yaml")
    keys = list(_model_keys(Config))
    sections_by_name = {key.split(".*.")[0] for key in keys if ".*." in key}
    assert {"limits.tiers", "gpu.cost.cloud_prices"} <= sections_by_name
    shown = set(_document_keys(example, sections_by_name))
    # A mapping of sections shows each section key in at least one of its entries.
    missing = [key for key in keys if key not in shown]
    assert not missing, f"deploy/example-config.yaml is the full example; it lacks {missing}"


# --- Dockerfile -------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  # the FROM argument, ARGs resolved: an image or an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for word, arguments in self.instructions if word == keyword]


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in _dockerfile_instructions((REPO / "Dockerfile").read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = arguments.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, image))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            key, _, default = arguments.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, arguments))
    return global_args, stages


def _stage_map() -> dict[str, Stage]:
    return {stage.name: stage for stage in _dockerfile_stages()[1]}


def _lineage(name: str, stages: dict[str, Stage]) -> list[Stage]:
    """The stage, the stages it is built FROM, and those it copies from, recursively."""
    seen: list[Stage] = []
    todo = [name]
    while todo:
        stage = stages[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in stages:
            todo.append(stage.base)
        for arguments in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", arguments)
            if source and source.group(1) in stages:
                todo.append(source.group(1))
    return seen


def _effective(name: str, keyword: str, stages: dict[str, Stage]) -> str | None:
    """The last `keyword` instruction in effect for a stage (inherited through FROM)."""
    stage: Stage | None = stages[name]
    while stage is not None:
        values = stage.all(keyword)
        if values:
            return values[-1]
        stage = stages.get(stage.base)
    return None


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"expected the exec (JSON) form, got {arguments}"
    return value


FINAL_STAGES = ("runtime", "demo")


def test_dockerfile_base_image_is_a_pinned_slim_python_311() -> None:
    _, stages = _dockerfile_stages()
    images = {stage.base for stage in stages if stage.base not in {s.name for s in stages}}
    assert images, "no base image"
    for image in images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?|python@sha256:[0-9a-f]{64}", image), (
            f"base image {image!r}: expected python:3.11.<patch>-slim-<debian release>, optionally @sha256:..."
        )


def test_dockerfile_default_target_is_runtime_without_torch() -> None:
    _, stages = _dockerfile_stages()
    assert stages[-1].name == "runtime", "the last stage is what `docker build .` gives: it must be runtime"
    by_name = _stage_map()
    for stage in _lineage("runtime", by_name):
        text = " ".join(arguments for _, arguments in stage.instructions)
        assert "torch" not in text.lower() and "[demo" not in text, f"stage {stage.name} (in runtime's lineage) installs torch"
    demo_text = " ".join(a for s in _lineage("demo", by_name) for _, a in s.instructions)
    assert "torch==" in demo_text and "whl/cpu" in demo_text, "the demo target installs the CPU build of torch"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_dockerfile_final_stages_run_unprivileged_and_serve(stage: str) -> None:
    stages = _stage_map()
    user = stages[stage].all("USER")
    assert user, f"stage {stage} sets no USER of its own"
    uid = user[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, f"stage {stage}: USER {user[-1]}; expected a numeric non-root uid:gid"

    healthcheck = _effective(stage, "HEALTHCHECK", stages)
    assert healthcheck and "/-/healthy" in healthcheck and "9180" in healthcheck
    exposed = " ".join(a for s in _lineage(stage, stages) for a in s.all("EXPOSE")).split()
    assert {"8080", "9180"} <= set(exposed)
    assert _exec_form(_effective(stage, "ENTRYPOINT", stages) or "null") == ["sidecar"]
    volumes = _exec_form(_effective(stage, "VOLUME", stages) or "null")
    config = load_config(DEPLOY / "docker" / "sidecar.yaml", env=DOCKER_RUN_ENVIRONMENT)
    assert volumes == [str(config.data_dir)], "the image's data_dir is its volume"
    # The health check sends no admin token: its path must be one served without it.
    (health_path,) = re.findall(r"127\.0\.0\.1:9180(/[^'\"\s)]*)", healthcheck)
    assert health_path in config.admin.open_paths


def test_dockerfile_runtime_runs_the_images_config() -> None:
    stages = _stage_map()
    assert _exec_form(_effective("runtime", "CMD", stages) or "null") == ["run"]
    env = " ".join(a for s in _lineage("runtime", stages) for a in s.all("ENV"))
    assert f"SIDECAR_CONFIG={CONTAINER_CONFIG_PATH}" in env
    copies = [a for s in _lineage("runtime", stages) for a in s.all("COPY")]
    assert f"deploy/docker/sidecar.yaml {CONTAINER_CONFIG_PATH}" in copies
    # Listener addresses come from that file, not from SIDECAR_* variables, which would
    # override a config file mounted over it. And no admin token is baked into the image.
    assert "SIDECAR_PROXY__" not in env and "SIDECAR_ADMIN__" not in env and "SIDECAR_DATA_DIR" not in env
    config = load_config(DEPLOY / "docker" / "sidecar.yaml", env=DOCKER_RUN_ENVIRONMENT)
    assert (config.proxy.listen.host, config.proxy.listen.port) == ("0.0.0.0", 8080)
    assert (config.admin.listen.host, config.admin.listen.port) == ("0.0.0.0", 9180)


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"  # any number of directories, none included
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_nothing_bulky() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    sources: list[str] = []
    for stage in _dockerfile_stages()[1]:
        for arguments in stage.all("COPY"):
            if "--from=" in arguments:
                continue
            sources += [word for word in arguments.split()[:-1] if not word.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _dockerignore_excludes(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for needed in ("sidecar/__init__.py", "sidecar/cli.py", "pyproject.toml", "README.md"):
        assert not _dockerignore_excludes(needed, patterns), needed
    for bulky in (".git/config", ".venv/bin/python", "tests/conftest.py", "deploy/compose/docker-compose.yml"):
        assert _dockerignore_excludes(bulky, patterns), f"{bulky} should stay out of the build context"


# --- docker compose -----------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)


def _compose_dotenv() -> dict[str, str]:
    """deploy/compose/.env, which docker compose reads for its variables."""
    return dict(
        line.split("=", 1)
        for line in (COMPOSE_DIR / ".env").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )


_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def _compose_interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's substitution: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME:?error}, and the
    forms without the colon (which treat an empty value as set). KeyError: a required one is missing."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, argument = match.group("name") or match.group("bare"), match.group("op"), match.group("arg")
        value = variables.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and missing:
            raise KeyError(f"{name}: {argument}")
        if op is not None and op.endswith("-") and missing:
            return argument
        return value or ""

    return _COMPOSE_VARIABLE.sub(substitute, text)


def _compose_environment(service: str, shell: Mapping[str, str] = COMPOSE_SHELL) -> dict[str, str]:
    """A service's `environment` as docker compose passes it: variables from .env, then the shell's."""
    environment = _compose()["services"][service].get("environment", {})
    assert isinstance(environment, dict), f"service {service}: write `environment` as a mapping"
    variables = {**_compose_dotenv(), **shell}
    return {name: _compose_interpolate(str(value), variables) for name, value in environment.items()}


def _compose_sidecar_config(service: str = "sidecar") -> Config:
    return load_config(COMPOSE_DIR / "sidecar.yaml", env=_compose_environment(service))


def _compose_validator() -> Any:
    import jsonschema

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    return jsonschema.Draft201909Validator(schema)


@pytest.mark.parametrize("path", [COMPOSE_FILE, COMPOSE_GPU_FILE], ids=_rel)
def test_compose_file_matches_the_compose_specification_schema(path: Path) -> None:
    errors = sorted(_compose_validator().iter_errors(_load_yaml(path)), key=lambda e: list(e.absolute_path))
    assert not errors, f"{_rel(path)}:\n" + "\n".join(
        f"  {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors
    )


def test_the_compose_schema_check_catches_mistakes() -> None:
    broken = _compose()
    broken["services"]["sidecar"]["healthcheck"] = {"intervall": "5s"}
    broken["services"]["prometheus"]["depends_on"] = {"alertmanager": {"condition": "started"}}
    assert len(list(_compose_validator().iter_errors(broken))) >= 2


def _docker_compose(*args: str, shell: Mapping[str, str] = COMPOSE_SHELL) -> subprocess.CompletedProcess[str]:
    tool = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in COMPOSE_SHELL}
    env.update(shell)
    return subprocess.run(
        [tool, *args], cwd=COMPOSE_DIR, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


@pytest.mark.parametrize(
    "files",
    [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]],
    ids=["base", "with-gpu-overlay"],
)
def test_docker_compose_accepts_the_stack(files: list[str]) -> None:
    # docker-compose 1.29 (Debian's docker-compose) validates, interpolates and merges the
    # files without a Docker engine; every profile is enabled so that every service is read.
    file_args = [arg for name in files for arg in ("-f", name)]
    result = _docker_compose(*file_args, "--profile", "demo", "--profile", "vllm", "config")
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)
    assert {"demo-model", "vllm", "sidecar", "elasticsearch", "kibana", "kibana-init", "prometheus",
            "alertmanager", "grafana", "otel-collector", "jaeger", "es-setup"} <= set(merged["services"])  # fmt: skip
    sidecar = merged["services"]["sidecar"]
    assert sidecar["environment"]["SIDECAR_ADMIN__TOKEN"] == STAND_IN_TOKEN
    assert merged["services"]["prometheus"]["environment"]["SIDECAR_ADMIN_TOKEN"] == STAND_IN_TOKEN
    if "docker-compose.gpu.yml" in files:
        assert sidecar["environment"]["SIDECAR_GPU__NVML__SIMULATE"] == "0"
        assert sidecar["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


def test_docker_compose_refuses_to_start_without_an_admin_token() -> None:
    # No default anywhere, .env included: a token in the repository is a token everyone knows.
    assert "SIDECAR_ADMIN_TOKEN" not in _compose_dotenv()
    for service in ("sidecar", "prometheus"):
        with pytest.raises(KeyError, match="SIDECAR_ADMIN_TOKEN"):
            _compose_environment(service, shell={})
    result = _docker_compose("config", shell={})
    assert result.returncode != 0 and "SIDECAR_ADMIN_TOKEN" in result.stderr, result.stderr


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image")
        assert image, f"service {name}: no image"
        if "build" in service:
            continue  # built from this repository
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"service {name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"service {name}: image {image!r} is not pinned"


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str, bool]]:
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith((".", "/")):
            yield (COMPOSE_DIR / parts[0]).resolve(), parts[1], parts[2:] == ["ro"]


def test_compose_bind_mounts_exist_and_are_read_only() -> None:
    for name, service in _compose()["services"].items():
        for source, target, read_only in _bind_mounts(service):
            assert read_only, f"service {name}: {source} -> {target} should be mounted read-only"
            assert source.exists(), f"service {name}: mounts {source}, which does not exist"


def test_compose_model_servers_answer_to_the_sidecars_upstream() -> None:
    services = _compose()["services"]
    config = _compose_sidecar_config()
    upstream = config.upstream.url
    for name in ("demo-model", "vllm"):
        service = services[name]
        assert upstream.host in service["networks"]["default"]["aliases"], f"{name} is not reachable as {upstream.host}"
        command = " ".join(service["command"])
        assert re.search(rf"(--port {upstream.port}|--listen 0\.0\.0\.0:{upstream.port})\b", command), (
            f"{name} does not listen on {upstream.port} on every interface: {command}"
        )
        assert len(service["profiles"]) == 1, f"{name}: one profile per model server"
    assert _compose_dotenv()["COMPOSE_PROFILES"] == "demo", "the demo server is the default model server"
    assert services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_sidecar_service_matches_its_config() -> None:
    services = _compose()["services"]
    sidecar = services["sidecar"]
    config = _compose_sidecar_config()
    mounts = {target: source for source, target, _ in _bind_mounts(sidecar)}
    assert mounts[f"{CONTAINER_CONFIG_PATH}"] == COMPOSE_DIR / "sidecar.yaml"
    named = {v.split(":")[1] for v in sidecar["volumes"] if not v.startswith((".", "/"))}
    assert str(config.data_dir) in named, "the data directory is on a named volume"
    assert sidecar["build"]["target"] == "runtime"
    published = {p.rsplit(":", 1)[1] for p in sidecar["ports"]}
    assert {str(config.proxy.listen.port), str(config.admin.listen.port)} <= published
    assert config.proxy.listen.host == config.admin.listen.host == "0.0.0.0"
    assert parse_duration(sidecar["stop_grace_period"]) > config.proxy.drain_timeout
    # Every service the sidecar talks to is in the stack.
    assert urlsplit(config.tracing.endpoint).hostname in services
    assert urlsplit(config.audit.elasticsearch.url).hostname in services
    assert config.rules.enabled and not config.rules.alertmanagers and not config.rules.webhooks, (
        "Prometheus notifies Alertmanager from the exported rules: the sidecar must not as well"
    )
    assert sidecar["depends_on"]["es-setup"]["condition"] == "service_completed_successfully"
    assert services["es-setup"]["command"] == ["es", "setup"]
    # Every service that runs the sidecar with this file gets a valid config from its own
    # environment; only the sidecar and Prometheus, which scrapes it, hold the admin token.
    for name, service in services.items():
        if any(target == CONTAINER_CONFIG_PATH for _, target, _ in _bind_mounts(service)):
            _compose_sidecar_config(name)
    holders = {name for name, s in services.items() if "SIDECAR_ADMIN_TOKEN" in json.dumps(s.get("environment"))}
    assert holders == {"sidecar", "prometheus"}


def test_prometheus_scrapes_the_sidecar_and_loads_the_exported_rules() -> None:
    services = _compose()["services"]
    config = _compose_sidecar_config()
    prometheus = _load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = jobs["inference-sidecar"]["static_configs"][0]["targets"]
    assert targets == [f"sidecar:{config.admin.listen.port}"]
    # /metrics needs the admin token, and Prometheus sends it: the entrypoint writes the
    # variable the sidecar's token comes from to the file the scrape reads, on a tmpfs.
    assert "/metrics" not in config.admin.open_paths and config.admin.token
    authorization = jobs["inference-sidecar"]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    server = services["prometheus"]
    (config_file,) = [a.removeprefix("--config.file=") for a in server["command"] if a.startswith("--config.file=")]
    credentials = Path(config_file).parent / authorization["credentials_file"]  # relative to the config file
    entrypoint = server["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    assert f'printf \'%s\' "$$SIDECAR_ADMIN_TOKEN" > {credentials} ' in entrypoint[2]
    assert 'exec /bin/prometheus "$$@"' in entrypoint[2], "the entrypoint runs Prometheus with `command`"
    assert str(credentials.parent) in server["tmpfs"]
    assert _compose_environment("prometheus")["SIDECAR_ADMIN_TOKEN"] == config.admin.token
    mounts = {target: source for source, target, _ in _bind_mounts(services["prometheus"])}
    assert mounts["/etc/prometheus/rules/sidecar-rules.yml"] == RULES_FILE
    assert prometheus["rule_files"] == ["rules/*.yml"]  # relative to /etc/prometheus/prometheus.yml
    assert mounts["/etc/prometheus/prometheus.yml"] == COMPOSE_DIR / "prometheus" / "prometheus.yml"
    alertmanagers = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    # The layout inside the container: the config with the rule file beside it in rules/,
    # and the token files the entrypoint writes (promtool checks that they exist).
    shutil.copy(COMPOSE_DIR / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES_FILE, tmp_path / "rules" / "sidecar-rules.yml")
    for job in _load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")["scrape_configs"]:
        credentials_file = job.get("authorization", {}).get("credentials_file")
        if credentials_file:
            assert not Path(credentials_file).is_absolute(), "relative to prometheus.yml, as in the container"
            (tmp_path / credentials_file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / credentials_file).write_text(STAND_IN_TOKEN, encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = require_tool("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(COMPOSE_DIR / "alertmanager" / "alertmanager.yml")],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_inhibitions_name_real_alerts() -> None:
    alertnames = {rule["alert"] for group in _load_yaml(RULES_FILE)["groups"] for rule in group["rules"] if "alert" in rule}
    config = _load_yaml(COMPOSE_DIR / "alertmanager" / "alertmanager.yml")
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            match = re.fullmatch(r'alertname(=~?)"(.*)"', matcher)
            if match:
                names = match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)]
                assert set(names) <= alertnames, f"inhibit rule names unknown alerts: {set(names) - alertnames}"


def test_grafana_provisioning_matches_the_stack() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    mounts = {target: source for source, target, _ in _bind_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == COMPOSE_DIR / "grafana" / "provisioning"
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = _load_yaml(provisioning / "datasources" / "datasources.yml")["datasources"]
    by_uid = {source["uid"]: source for source in datasources}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"].get("isDefault")
    for source in datasources:
        assert urlsplit(source["url"]).hostname in services, f"data source {source['name']}: unknown host"
    for destination in by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]:
        assert destination["datasourceUid"] in by_uid
        assert destination["name"] == "trace_id"  # the exemplar label the sidecar sets
    audit = next(s for s in datasources if s["type"] == "elasticsearch")
    assert audit["jsonData"]["index"] == "logs-sidecar.audit-*"
    (provider,) = _load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == REPO / "dashboards", "the provider reads the repository's dashboards/"


def test_otel_collector_pipeline_is_complete_and_feeds_jaeger() -> None:
    services = _compose()["services"]
    collector = _load_yaml(COMPOSE_DIR / "otel-collector" / "config.yaml")
    mounts = {target: source for source, target, _ in _bind_mounts(services["otel-collector"])}
    (config_arg,) = [a for a in services["otel-collector"]["command"] if a.startswith("--config=")]
    assert mounts[config_arg.removeprefix("--config=")] == COMPOSE_DIR / "otel-collector" / "config.yaml"
    for pipeline_name, pipeline in collector["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"pipeline {pipeline_name}: {kind[:-1]} {component} is not defined"
        assert pipeline["receivers"] and pipeline["exporters"]
    for extension in collector["service"].get("extensions", []):
        assert extension in collector["extensions"]
    traces = collector["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    endpoints = [str(collector["exporters"][name].get("endpoint", "")) for name in traces["exporters"]]
    assert "jaeger" in {urlsplit("//" + e).hostname for e in endpoints}, "traces reach Jaeger"
    config = _compose_sidecar_config()
    endpoint = urlsplit(config.tracing.endpoint)
    assert endpoint.hostname == "otel-collector" and endpoint.path == "/v1/traces"
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http.rsplit(":", 1)[1] == str(endpoint.port)
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# --- Kibana saved objects -----------------------------------------------------------------


def _audit_fields() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", AUDIT_SCHEMA_DOC.read_text(encoding="utf-8"), re.MULTILINE))


def _saved_objects() -> list[dict[str, Any]]:
    text = (COMPOSE_DIR / "kibana" / "sidecar-audit.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_kibana_data_view_covers_the_audit_data_streams() -> None:
    (data_view,) = [o for o in _saved_objects() if o["type"] == "index-pattern"]
    title = data_view["attributes"]["title"]
    assert title == "logs-sidecar.audit-*"
    assert data_view["attributes"]["timeFieldName"] == "@timestamp"
    config = _compose_sidecar_config()
    assert re.fullmatch(title.replace(".", r"\.").replace("*", ".*"), config.audit.elasticsearch.target)


def test_kibana_saved_searches_use_real_audit_fields() -> None:
    objects = _saved_objects()
    fields = _audit_fields()
    assert len(fields) > 50, "docs/audit-schema.md's field table was not found"
    ids = {o["id"] for o in objects}
    assert len(ids) == len(objects), "duplicate saved object ids"
    data_views = {o["id"] for o in objects if o["type"] == "index-pattern"}
    searches = [o for o in objects if o["type"] == "search"]
    for search in searches:
        attributes = search["attributes"]
        source = json.loads(attributes["kibanaSavedObjectMeta"]["searchSourceJSON"])
        references = {ref["name"]: ref for ref in search["references"]}
        reference = references[source["indexRefName"]]
        assert reference["type"] == "index-pattern" and reference["id"] in data_views
        assert source["query"]["language"] == "kuery"
        query_fields = set(re.findall(r"([A-Za-z_@][\w.@]*)\s*:", source["query"]["query"]))
        used = query_fields | set(attributes["columns"]) | {column for column, _ in attributes["sort"]}
        unknown = used - fields
        assert not unknown, f"saved search {attributes['title']!r} uses fields the audit schema lacks: {unknown}"
    titles = " ".join(s["attributes"]["title"].lower() for s in searches)
    for topic in ("failed", "tenant", "configuration", "alerts", "gpu"):
        assert topic in titles, f"no saved search for {topic}"


def test_kibana_init_imports_the_saved_objects() -> None:
    services = _compose()["services"]
    init = services["kibana-init"]
    assert init["depends_on"]["kibana"]["condition"] == "service_healthy"
    mounts = {target: source for source, target, _ in _bind_mounts(init)}
    script = init["entrypoint"][-1]
    directory = next(t for t in mounts if script.startswith(t + "/"))
    local_script = mounts[directory] / script.removeprefix(directory + "/")
    text = local_script.read_text(encoding="utf-8")
    assert "/api/saved_objects/_import" in text and "kbn-xsrf" in text
    assert "sidecar-audit.ndjson" in text
    result = subprocess.run(["sh", "-n", str(local_script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def _kube_documents() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(KUBE_DIR.rglob("*.yaml")):
        for document in _yaml_documents(path):
            documents.append((path, document))
    return documents


CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def _builtin_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc) for path, doc in _kube_documents() if doc["kind"] not in CRD_KINDS and doc["kind"] != "Kustomization"
    ]


def _latest_kubernetes() -> str:
    import kubernetes_validate.utils

    return kubernetes_validate.utils.latest_version()


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, "latest"])
def test_kubernetes_manifests_validate_against_the_api_schemas(version: str) -> None:
    import kubernetes_validate

    version = _latest_kubernetes() if version == "latest" else version
    manifests = _builtin_manifests()
    assert {doc["kind"] for _, doc in manifests} >= {"Deployment", "Service", "ConfigMap", "Secret"}
    for path, document in manifests:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            location = ".".join(map(str, exc.path))
            pytest.fail(f"{_rel(path)}: {document['kind']} {document['metadata']['name']}: {location}: {exc.message}")


def test_the_kubernetes_schema_check_catches_mistakes() -> None:
    import kubernetes_validate

    deployment = _deployment()
    sidecar = deployment["spec"]["template"]["spec"]["initContainers"][0]
    sidecar["securityContext"]["runAsNonroot"] = True  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] = ["Always"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [doc for _, doc in _kube_documents() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def _deployment() -> dict[str, Any]:
    return _kind("Deployment")


def _sidecar_container() -> dict[str, Any]:
    pod = _deployment()["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod.get("initContainers", []) if c["name"] == "inference-sidecar"]
    return sidecar


def _kubernetes_environment(secret_values: Mapping[str, str] | None = None) -> dict[str, str]:
    """The sidecar container's SIDECAR_* environment. The shipped Secret holds placeholders,
    so its keys read as stand-ins, unless `secret_values` gives them."""
    secret = _kind("Secret")
    environment = {}
    for item in _sidecar_container()["env"]:
        if "value" in item:
            environment[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], f"{item['name']}: from an unknown Secret {ref['name']}"
        environment[item["name"]] = (secret_values or {}).get(ref["key"], f"{STAND_IN_TOKEN}-{ref['key']}")
    return {name: value for name, value in environment.items() if name.startswith("SIDECAR_")}


def _kubernetes_config(tmp_path: Path) -> Config:
    return load_config(_kubernetes_sidecar_config(tmp_path), env=_kubernetes_environment())


def _port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def test_the_sidecar_is_a_native_sidecar_in_the_model_servers_pod(tmp_path: Path) -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    sidecar = _sidecar_container()
    assert sidecar["restartPolicy"] == "Always", "a native sidecar is an init container with restartPolicy Always"
    assert pod["initContainers"][0]["name"] == sidecar["name"], "the sidecar starts first"
    (model,) = pod["containers"]
    assert model["image"].startswith("vllm/vllm-openai:v")
    config = _kubernetes_config(tmp_path)
    # vLLM listens on loopback only, where the sidecar's upstream points.
    args = model["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1" == config.upstream.url.host
    assert int(args[args.index("--port") + 1]) == config.upstream.url.port
    # Probes reach the admin listener on the pod IP: it must bind every interface.
    assert config.admin.listen.host == "0.0.0.0" and config.proxy.listen.host == "0.0.0.0"
    assert _port(sidecar, "admin") == config.admin.listen.port
    assert _port(sidecar, "http") == config.proxy.listen.port
    for probe, path in (("startupProbe", "/-/healthy"), ("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ("admin", config.admin.listen.port), probe
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.proxy.drain_timeout + 10, "the grace period covers vLLM's preStop pause and the drain"


def test_the_sidecar_container_is_locked_down(tmp_path: Path) -> None:
    sidecar = _sidecar_container()
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] >= 1000
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    resources = sidecar["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # Writable paths are volumes: the data directory and /tmp.
    config = _kubernetes_config(tmp_path)
    pod = _deployment()["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in sidecar["volumeMounts"]}
    data = volumes[mounts[str(config.data_dir)]["name"]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data
    assert "/tmp" in mounts
    config_mount = mounts[str(Path(CONTAINER_CONFIG_PATH).parent)]
    assert config_mount.get("readOnly") is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == _kind("ConfigMap")["metadata"]["name"]
    env = {item["name"]: item for item in sidecar["env"]}
    assert env["SIDECAR_CONFIG"]["value"] == CONTAINER_CONFIG_PATH


def test_elasticsearch_credentials_come_from_the_secret_through_real_config_keys(tmp_path: Path) -> None:
    secret = _kind("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    credentials = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in _sidecar_container()["env"]
        if item["name"].startswith("SIDECAR_AUDIT__ELASTICSEARCH__")
    }
    assert credentials, "no Elasticsearch credentials in the sidecar's environment"
    for name, ref in credentials.items():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
        # The variable names a real key: the loader puts its value there.
        key = name.removeprefix("SIDECAR_AUDIT__ELASTICSEARCH__").lower()
        environment = {**_kubernetes_environment(), name: "from-the-secret"}
        config = load_config(_kubernetes_sidecar_config(tmp_path), env=environment)
        assert getattr(config.audit.elasticsearch, key) == "from-the-secret"


def _monitor_endpoints() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for kind, endpoints in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")):
        monitor = _kind(kind)
        for endpoint in monitor["spec"][endpoints]:
            yield monitor, endpoint


def test_the_admin_token_comes_from_the_secret_and_prometheus_sends_it(tmp_path: Path) -> None:
    secret = _kind("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    sidecar = _sidecar_container()
    (token,) = [item for item in sidecar["env"] if item["name"] == "SIDECAR_ADMIN__TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
    assert not ref.get("optional"), "without its token the sidecar must not start"
    config = _kubernetes_config(tmp_path)
    assert config.admin.token == _kubernetes_environment()["SIDECAR_ADMIN__TOKEN"]
    # The kubelet sends no token, so the probes' paths are open; /metrics is not.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["path"] in config.admin.open_paths, probe
    assert "/metrics" not in config.admin.open_paths, "Prometheus sends the token: /metrics needs no exception"
    # The Operator reads the token from the same Secret key, in the monitor's namespace.
    for monitor, endpoint in _monitor_endpoints():
        name = f"{monitor['kind']} {monitor['metadata']['name']}"
        assert monitor["metadata"].get("namespace") == secret["metadata"].get("namespace"), name
        authorization = endpoint.get("authorization")
        assert authorization, f"{name}: scrapes without the admin token"
        assert authorization.get("type", "Bearer") == "Bearer", name
        credentials = authorization["credentials"]
        assert (credentials["name"], credentials["key"]) == (ref["name"], ref["key"]), name
        assert not credentials.get("optional"), name
        assert endpoint.get("scheme", "http") == ("https" if config.admin.tls.enabled else "http"), name
    # Until the placeholder is replaced, the sidecar refuses to start rather than serve an
    # open admin port.
    shipped = {key: str(value) for key, value in secret.get("stringData", {}).items()}
    with pytest.raises(ConfigError, match="SIDECAR_ADMIN__TOKEN"):
        load_config(_kubernetes_sidecar_config(tmp_path), env=_kubernetes_environment(shipped))


def test_services_and_monitors_select_the_pod_and_its_ports() -> None:
    pod_template = _deployment()["spec"]["template"]
    pod_labels = pod_template["metadata"]["labels"]
    assert _deployment()["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    sidecar = _sidecar_container()
    container_ports = {p["containerPort"] for p in sidecar["ports"]}
    services = [doc for _, doc in _kube_documents() if doc["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            # Numbers: a named targetPort is looked up among regular containers only.
            assert isinstance(port["targetPort"], int) and port["targetPort"] in container_ports
    admin = _port(sidecar, "admin")
    service_monitor = _kind("ServiceMonitor")
    (metrics_service,) = [
        s for s in services if service_monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    service_ports = {p["name"]: p for p in metrics_service["spec"]["ports"]}
    for endpoint in service_monitor["spec"]["endpoints"]:
        assert service_ports[endpoint["port"]]["targetPort"] == admin
        assert endpoint["path"] == "/metrics"
    client_service = _kind("Service", "vllm")
    assert all(p["targetPort"] != admin for p in client_service["spec"]["ports"]), "clients never see the admin port"
    pod_monitor = _kind("PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert _port(sidecar, endpoint["port"]) == admin


def _prometheus_operator_model(kind: str) -> Any:
    from cloudcoil.models.prometheus_operator import v1

    return getattr(v1, kind)


@pytest.mark.parametrize("kind", sorted(CRD_KINDS))
def test_prometheus_operator_objects_match_their_crds(kind: str) -> None:
    document = _kind(kind)
    model = _prometheus_operator_model(kind)
    try:
        parsed = model.model_validate(document)
    except Exception as exc:  # pydantic.ValidationError, with every problem listed
        pytest.fail(f"{kind}: {exc}")
    # The models ignore unknown fields; a round trip that loses one exposes it.
    round_trip = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert round_trip == document, f"{kind}: fields the CRD does not know were dropped"


def test_the_crd_check_catches_mistakes() -> None:
    document = _kind("ServiceMonitor")
    document["spec"]["endpoints"][0]["scrapeInterval"] = "15s"  # not a field: `interval` is
    parsed = _prometheus_operator_model("ServiceMonitor").model_validate(document)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) != document


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", KUBE_DIR / "generate_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_spec_equals_the_exported_rules() -> None:
    rule = _kind("PrometheusRule")
    assert rule["spec"] == _load_yaml(RULES_FILE), (
        "deploy/kubernetes/monitoring/prometheusrule.yaml differs from alerts/sidecar-rules.yml: "
        "run python deploy/kubernetes/generate_prometheusrule.py"
    )


def test_prometheusrule_file_is_what_the_generator_writes() -> None:
    generator = _generator()
    expected = generator.prometheusrule_text(RULES_FILE.read_text(encoding="utf-8"))
    assert (MONITORING_DIR / "prometheusrule.yaml").read_text(encoding="utf-8") == expected, (
        "run python deploy/kubernetes/generate_prometheusrule.py"
    )
    assert generator.main(["--check"]) == 0


def test_kustomizations_list_every_manifest() -> None:
    for directory, alternatives in ((KUBE_DIR, set()), (MONITORING_DIR, {"podmonitor.yaml"})):
        kustomization = _load_yaml(directory / "kustomization.yaml")
        resources = set(kustomization["resources"])
        manifests = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert resources == manifests - alternatives, directory
        for name in resources:
            assert (directory / name).is_file()


def test_kubectl_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (not a Debian package at a usable version; optional)")
    for directory in (KUBE_DIR, MONITORING_DIR):
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
        assert result.returncode == 0, result.stderr
        assert list(yaml.safe_load_all(result.stdout))


# --- systemd ------------------------------------------------------------------------------


def _unit_settings() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_hardened_and_drains_on_stop() -> None:
    service = _unit_settings()["Service"]

    def one(key: str) -> str:
        assert key in service, f"[Service] has no {key}="
        return service[key][-1]

    config = load_config(DEPLOY / "systemd" / "sidecar.yaml", env={})
    assert one("DynamicUser") == "yes" or one("User") not in ("", "root")
    assert Path(config.data_dir) == Path("/var/lib") / one("StateDirectory"), "data_dir is the StateDirectory"
    assert one("ProtectSystem") == "strict" and one("NoNewPrivileges") == "yes"
    for key in ("ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID"):
        assert one(key) == "yes", key
    assert one("CapabilityBoundingSet") == ""
    assert one("KillSignal") == "SIGTERM"
    assert parse_duration(one("TimeoutStopSec")) > config.proxy.drain_timeout
    assert re.fullmatch(r"\S*kill -(HUP|SIGHUP|s HUP) \$MAINPID", one("ExecReload")), "ExecReload sends SIGHUP"
    assert shlex.split(one("ExecStart"))[1:] == ["run"]
    environment = dict(e.split("=", 1) for e in service["Environment"])
    assert environment["SIDECAR_CONFIG"] == f"/etc/{one('ConfigurationDirectory')}/sidecar.yaml"


def _systemd_root(tmp_path: Path) -> Path:
    """A file system root with the distribution's units, the unit and stubs for its commands."""
    root = tmp_path / "root"
    units = Path("/usr/lib/systemd/system")
    if not units.is_dir():
        pytest.fail(f"{units} is missing: systemd-analyze needs the distribution's units (Debian package systemd)")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEMD_UNIT, root / "etc/systemd/system" / SYSTEMD_UNIT.name)
    # verify checks that each command is executable; the sidecar is not installed here.
    for key, values in _unit_settings()["Service"].items():
        if key.startswith("Exec"):
            for value in values:
                command = Path(shlex.split(value.lstrip("-@:+!"))[0])
                assert command.is_absolute(), f"{key}={value}: use an absolute path"
                stub = root / command.relative_to("/")
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\n")
                stub.chmod(0o755)
    return root


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # `verify` loads the unit the way systemd would, without a running systemd (so it works
    # in a container); --root makes it read the unit and its commands from a scratch tree.
    tool = require_tool("systemd-analyze")
    root = _systemd_root(tmp_path)
    result = subprocess.run(
        [tool, "verify", "--man=no", f"--root={root}", SYSTEMD_UNIT.name],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    # Unknown keys and bad values are only warnings: any output is a failure.
    assert result.returncode == 0 and not output, output


def test_systemd_analyze_rates_the_unit_well_hardened(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    root = _systemd_root(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", f"--root={root}", "--threshold=25", "--no-pager", SYSTEMD_UNIT.name],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip
    summary = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert result.returncode == 0, f"exposure above 2.5: {summary or result.stderr}"


# --- docs --------------------------------------------------------------------------------


def test_deploy_guide_covers_each_deployment() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for mention in (
        "docker compose", "docker-compose.gpu.yml", "kubectl apply -k deploy/kubernetes", "generate_prometheusrule.py",
        "inference-sidecar.service", "example-config.yaml", "systemctl reload", "--target demo",
        "SIDECAR_ADMIN__TOKEN", "SIDECAR_ADMIN_TOKEN", "admin-token", "open_paths", "openssl rand",
    ):  # fmt: skip
        assert mention in guide, f"docs/deploy.md does not mention {mention}"
