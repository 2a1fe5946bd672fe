"""Consistency checks of the deployment files: deploy/, .dockerignore and the CI workflow.

There is no Docker engine where these tests run, so nothing is built here: the files are parsed and
checked against each other and against the code (module entry points, settings defaults, the IDL).
The one end-to-end check, ``test_smoke_script_against_local_stack``, runs deploy/smoke.py (what the
``tests`` service of docker-compose.test.yml runs) against a local redis/chatsvc/gateway.

The checks that need the gateway package (its ``__main__``, its settings, the smoke run) fail until
the gateway lands.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chatsvc.config import parse_addr
from chatsvc.settings import ChatsvcSettings
from tests.procs import ROOT, need_tool, start_gateway

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_TEST = DEPLOY / "docker-compose.test.yml"
REDIS_CONF = DEPLOY / "redis.conf"
SMOKE = DEPLOY / "smoke.py"
DOCKERIGNORE = ROOT / ".dockerignore"
CI_WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

APP_SERVICES = ("redis", "chatsvc", "gateway")
MODULES = {"chatsvc": "chatsvc", "gateway": "gateway"}  # compose service -> python -m module
GATEWAY_DEFAULT_PORT = 8080
REDIS_DEFAULT_PORT = 6379
ONE_SHOT = {"tests"}  # services of the test stack that run once and exit: no healthcheck


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _env_names(cls: type) -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(cls)}


def gateway_settings() -> type:
    """The gateway's settings class (imported lazily: the tests that need it fail until it lands)."""
    from gateway.settings import GatewaySettings

    return GatewaySettings


CHATSVC_DEFAULT_PORT = _default(ChatsvcSettings, "port")
# Read by both processes (chatsvc.wire.idl) besides their settings classes.
EXTRA_ENV = {"CHATSVC_IDL"}


# --- helpers -----------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.relative_to(ROOT)}: not a YAML mapping"
    return doc


def services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = doc.get("services")
    assert isinstance(svcs, dict) and svcs, "no services"
    return svcs


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either compose form (mapping or list of KEY=VALUE)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_of(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def python_module(argv: list[str]) -> str | None:
    """``python -m MODULE ...`` (or python3 / a path to python) -> MODULE."""
    if len(argv) >= 3 and re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", argv[0]) and argv[1] == "-m":
        return argv[2]
    return None


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """depends_on in either form -> {service: condition}."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of every published port; host_ip '' means all interfaces."""
    out = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            continue  # "8080" alone: a random host port, not a fixed publication
        host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def seconds(duration: Any) -> float:
    """A compose duration ("20s", "1m30s", "500ms") or a bare number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def healthcheck_text(svc: dict[str, Any]) -> str:
    test = (svc.get("healthcheck") or {}).get("test")
    return " ".join(argv_of(test)) if not isinstance(test, str) else test


def redis_conf() -> dict[str, list[str]]:
    """Directive -> its last value (as words), from deploy/redis.conf."""
    assert REDIS_CONF.is_file(), "deploy/redis.conf is missing"
    conf: dict[str, list[str]] = {}
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *args = shlex.split(line)
        conf[key.lower()] = args
    return conf


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    assert DOCKERFILE.is_file(), "deploy/Dockerfile is missing"
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue  # comments (and parser directives), also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments; the shell form is split like a shell would."""
    if args.startswith("["):
        return [str(x) for x in json.loads(args)]
    return shlex.split(args)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def image_argv(instructions: list[Instruction]) -> list[str]:
    """What the image runs by default: ENTRYPOINT + CMD of the final stage."""
    entry: list[str] = []
    cmd: list[str] = []
    for ins in final_stage(instructions):
        if ins.keyword == "ENTRYPOINT":
            entry = exec_form(ins.args)
        elif ins.keyword == "CMD":
            cmd = exec_form(ins.args)
    return entry + cmd


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage(instructions):
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str, int]]:
    """(sources, destination, stage) of every COPY/ADD from the build context (not --from)."""
    out = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1], ins.stage))
    return out


def in_context(source: str, path: str) -> bool:
    """Does a COPY source from the repo root bring in ``path`` (a folder or file)?"""
    source = source.rstrip("/")
    return source in (".", "./") or source == path or fnmatch.fnmatch(path, source)


def chatsvc_port(svc: dict[str, Any]) -> int:
    return int(env_of(svc).get("CHATSVC_PORT", CHATSVC_DEFAULT_PORT))


def gateway_port(svc: dict[str, Any]) -> int:
    return int(env_of(svc).get("GATEWAY_PORT", GATEWAY_DEFAULT_PORT))


def test_gateway_default_port_is_8080():
    assert _default(gateway_settings(), "port") == GATEWAY_DEFAULT_PORT


@pytest.fixture(scope="module")
def compose() -> dict[str, dict[str, Any]]:
    return services(load_yaml(COMPOSE))


@pytest.fixture(scope="module")
def compose_test() -> dict[str, dict[str, Any]]:
    return services(load_yaml(COMPOSE_TEST))


@pytest.fixture(scope="module", params=["docker-compose.yml", "docker-compose.test.yml"])
def any_compose(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return services(load_yaml(DEPLOY / request.param))


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_names_the_three_services(compose):
    assert set(compose) == set(APP_SERVICES)


def test_gateway_publishes_8080(compose):
    gw = compose["gateway"]
    published = published_ports(gw)
    assert (("", 8080, gateway_port(gw)) in published
            or ("0.0.0.0", 8080, gateway_port(gw)) in published), published
    assert gateway_port(gw) == 8080


def test_internal_services_are_not_published_beyond_loopback(compose):
    for name in ("redis", "chatsvc"):
        for host_ip, published, _ in published_ports(compose[name]):
            assert host_ip in ("127.0.0.1", "::1"), f"{name} publishes {published} on all interfaces"


def test_chatsvc_listens_on_all_interfaces(any_compose):
    host = env_of(any_compose["chatsvc"]).get("CHATSVC_HOST", _default(ChatsvcSettings, "host"))
    assert host in ("0.0.0.0", "::"), "chatsvc must listen beyond loopback to be reachable in a container"
    gw_host = env_of(any_compose["gateway"]).get("GATEWAY_HOST", "0.0.0.0")
    assert gw_host in ("0.0.0.0", "::")


def test_gateway_chatsvc_addr_points_at_chatsvc(any_compose):
    addr = env_of(any_compose["gateway"]).get("CHATSVC_ADDR")
    assert addr, "gateway has no CHATSVC_ADDR (its default 127.0.0.1 is wrong in a container)"
    host, port = parse_addr(addr, CHATSVC_DEFAULT_PORT)
    assert host == "chatsvc" and "chatsvc" in any_compose
    assert port == chatsvc_port(any_compose["chatsvc"])


def test_chatsvc_redis_url_points_at_redis(any_compose):
    url = env_of(any_compose["chatsvc"]).get("REDIS_URL")
    assert url, "chatsvc has no REDIS_URL (its default 127.0.0.1 is wrong in a container)"
    parts = urlsplit(url)
    assert parts.scheme == "redis"
    assert parts.hostname == "redis" and "redis" in any_compose
    conf_port = int(redis_conf().get("port", [REDIS_DEFAULT_PORT])[0])
    assert (parts.port or REDIS_DEFAULT_PORT) == conf_port


def test_redis_runs_deploy_redis_conf_with_aof(any_compose):
    redis = any_compose["redis"]
    argv = argv_of(redis.get("command"))
    assert argv[:1] == ["redis-server"] and len(argv) >= 2, argv
    conf_path = argv[1]
    mounts = {}
    for vol in redis.get("volumes") or []:
        source, target, *_ = (vol.split(":") if isinstance(vol, str)
                              else (vol.get("source"), vol.get("target")))
        mounts[target] = source
    assert conf_path in mounts, f"{conf_path} is not mounted into redis"
    assert (DEPLOY / mounts[conf_path]).resolve() == REDIS_CONF.resolve()

    conf = redis_conf()
    assert conf.get("appendonly") == ["yes"]
    assert conf.get("appendfsync", ["everysec"])[0] in ("always", "everysec")
    assert conf.get("dir") == ["/data"]
    assert conf.get("maxmemory-policy", ["noeviction"]) == ["noeviction"], "chat history must not be evicted"
    binds = conf.get("bind", ["*"])
    assert any(b not in ("127.0.0.1", "::1", "-::1") for b in binds), "redis must be reachable from chatsvc"


def test_redis_data_is_a_named_volume(compose):
    volumes = [v for v in compose["redis"].get("volumes") or [] if isinstance(v, str)]
    data = [v.split(":")[0] for v in volumes if v.split(":")[1] == "/data"]
    assert data, "redis /data has no volume: the AOF would die with the container"
    top = load_yaml(COMPOSE).get("volumes") or {}
    assert data[0] in top, f"volume {data[0]} is not declared"


def test_every_long_running_service_has_a_healthcheck(any_compose):
    for name, svc in any_compose.items():
        if name in ONE_SHOT:
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert argv_of(check["test"])[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test form"


def test_healthchecks_probe_the_right_ports(any_compose):
    assert "redis-cli ping" in healthcheck_text(any_compose["redis"])
    chatsvc_check = healthcheck_text(any_compose["chatsvc"])
    assert "python" in chatsvc_check and str(chatsvc_port(any_compose["chatsvc"])) in chatsvc_check
    gateway_check = healthcheck_text(any_compose["gateway"])
    assert "python" in gateway_check and "urllib" in gateway_check
    assert f":{gateway_port(any_compose['gateway'])}/ping" in gateway_check


def test_depends_on_reference_existing_services(any_compose):
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in any_compose.items():
        for dep, condition in depends_on(svc).items():
            assert dep in any_compose, f"{name} depends on unknown service {dep}"
            assert condition in valid, f"{name} -> {dep}: unknown condition {condition}"
            if condition == "service_healthy":
                assert any_compose[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, it has no check"
    assert depends_on(any_compose["chatsvc"]).get("redis") == "service_healthy"
    assert depends_on(any_compose["gateway"]).get("chatsvc") == "service_healthy"


def test_restart_policy_and_stop_grace_period(any_compose):
    if "tests" not in any_compose:  # the test stack is torn down after one run: no restarts
        for name in APP_SERVICES:
            assert any_compose[name].get("restart") == "unless-stopped", name
    drains = {"chatsvc": ("CHATSVC_DRAIN_TIMEOUT", _default(ChatsvcSettings, "drain_timeout")),
              "gateway": ("GATEWAY_DRAIN_TIMEOUT", _default(gateway_settings(), "drain_timeout"))}
    for name, (var, default) in drains.items():
        grace = seconds(any_compose[name].get("stop_grace_period", "10s"))  # compose's default
        drain = float(env_of(any_compose[name]).get(var, default))
        assert grace > drain, f"{name}: stop_grace_period {grace}s must exceed {var} {drain}s"


def test_environment_variables_are_real_settings(any_compose):
    """A misspelt variable would be ignored silently and the default (127.0.0.1...) used instead."""
    known = {"chatsvc": _env_names(ChatsvcSettings), "gateway": _env_names(gateway_settings())}
    for name, names in known.items():
        unknown = set(env_of(any_compose[name])) - names - EXTRA_ENV
        assert not unknown, f"{name}: no such setting {sorted(unknown)}"


def test_compose_builds_from_the_repo_root_with_deploy_dockerfile(any_compose):
    built = [s for s in any_compose.values() if "build" in s]
    assert built, "no service builds the project image"
    for svc in built:
        build = svc["build"]
        context = (DEPLOY / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        dockerfile_path = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert context == ROOT, f"build context {context} is not the repo root"
        assert (context / dockerfile_path).resolve() == DOCKERFILE.resolve()
    for name in MODULES:
        assert "build" in any_compose[name] or any_compose[name].get("image") in {
            s.get("image") for s in built}, f"{name} does not run the project image"


def test_bind_mount_sources_exist(any_compose):
    for name, svc in any_compose.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


# --- entry points ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(MODULES))
def test_compose_commands_invoke_real_modules(any_compose, service):
    """Fails for the gateway until gateway/__main__.py lands."""
    svc = any_compose[service]
    argv = argv_of(svc.get("command")) or image_argv(dockerfile())
    module = python_module(argv)
    assert module == MODULES[service], f"{service} runs {argv}"
    main = ROOT.joinpath(*module.split("."), "__main__.py")
    assert main.is_file(), f"{main.relative_to(ROOT)} does not exist: `python -m {module}` cannot run"


def test_image_default_command_is_a_real_module():
    argv = image_argv(dockerfile())
    module = python_module(argv)
    assert module in MODULES.values(), f"the image runs {argv}"
    assert ROOT.joinpath(module, "__main__.py").is_file()


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_base_user_and_install():
    instructions = dockerfile()
    final = final_stage(instructions)
    base = final[0].args.split()
    base_image = base[-1] if "AS" not in (w.upper() for w in base) else base[-3]
    if base_image.startswith("${"):
        arg = base_image.strip("${}").split(":-")[0]
        defaults = [i.args.partition("=")[2] for i in instructions if i.keyword == "ARG" and i.args.startswith(arg + "=")]
        base_image = defaults[0] if defaults else base_image
    assert base_image == "python:3.11-slim"

    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the image runs as root: add a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "pip install" in runs, "the project is never installed"


def test_dockerfile_copies_the_project_and_the_idl():
    instructions = dockerfile()
    all_sources = [(src, stage) for sources, _, stage in copies(instructions) for src in sources]
    for needed in ("idl", "chatsvc", "gateway", "setup.cfg", "pyproject.toml"):
        assert any(in_context(src, needed) for src, _ in all_sources), f"the Dockerfile never copies {needed}"

    # The final image holds idl/, and CHATSVC_IDL (or the editable install's relative path) finds it.
    last = max(i.stage for i in instructions)
    idl_dests = [dest for sources, dest, stage in copies(instructions)
                 if stage == last and any(in_context(src, "idl") for src in sources)]
    assert idl_dests, "the final image does not COPY idl/"
    idl_env = image_env(instructions).get("CHATSVC_IDL")
    if idl_env is not None:
        assert idl_env == idl_dests[0].rstrip("/") + "/idl_rpc.thrift", (idl_env, idl_dests)
    assert (ROOT / "idl" / "idl_rpc.thrift").is_file()


def test_dockerfile_sources_exist_and_are_not_ignored():
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for sources, _, _ in copies(dockerfile()):
        for src in sources:
            if "[" in src or "*" in src:
                continue  # a glob may match nothing on purpose (README.m[d])
            path = src.rstrip("/")
            assert not any(fnmatch.fnmatch(path, pat.rstrip("/")) for pat in ignored), f"{src} is .dockerignored"
            # gateway/ is skipped until the package lands (git keeps no empty folder).
            if path != "gateway" or (ROOT / "gateway" / "__init__.py").exists():
                assert (ROOT / path).exists(), f"COPY {src}: not in the repo"


def test_dockerignore_excludes_local_state():
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing at the repo root"
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", "var", ".git", "tests/interop/node/node_modules", "bench/results"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    for kept in ("idl", "chatsvc", "gateway", "setup.cfg", "pyproject.toml", "README.md"):
        assert not any(fnmatch.fnmatch(kept, p) for p in patterns), f".dockerignore drops {kept}"


# --- docker-compose.test.yml -------------------------------------------------------------------


def test_test_stack_runs_the_smoke_test_against_the_gateway(compose_test):
    assert set(APP_SERVICES) <= set(compose_test)
    tests = compose_test.get("tests")
    assert tests, "docker-compose.test.yml has no tests service"
    assert depends_on(tests).get("gateway") == "service_healthy"
    url = urlsplit(env_of(tests).get("GATEWAY_URL", ""))
    assert url.hostname == "gateway" and url.port == gateway_port(compose_test["gateway"])
    argv = argv_of(tests.get("command"))
    assert any(a.endswith("smoke.py") for a in argv), argv
    assert SMOKE.is_file()
    # The networks let the tests service reach the gateway.
    def nets(svc: dict[str, Any]) -> set[str]:
        return set(svc.get("networks") or ["default"])
    assert nets(tests) & nets(compose_test["gateway"])


def test_test_stack_publishes_nothing(compose_test):
    for name, svc in compose_test.items():
        assert not svc.get("ports"), f"{name} publishes ports in the test stack"


def test_test_stack_matches_the_real_stack(compose, compose_test):
    for name in APP_SERVICES:
        real, test = compose[name], compose_test[name]
        assert argv_of(test.get("command")) == argv_of(real.get("command")), name
        assert env_of(test) == env_of(real), name
        assert healthcheck_text(test) == healthcheck_text(real), name
        assert depends_on(test) == depends_on(real), name


def test_backend_network_is_internal():
    for path in (COMPOSE, COMPOSE_TEST):
        doc = load_yaml(path)
        svcs = services(doc)
        nets = doc.get("networks") or {}
        for name in ("redis", "chatsvc"):
            for net in svcs[name].get("networks") or ["default"]:
                assert (nets.get(net) or {}).get("internal") is True, f"{path.name}: {name} on non-internal {net}"


# --- CI ----------------------------------------------------------------------------------------


def test_ci_workflow_runs_make_test():
    wf = load_yaml(CI_WORKFLOW)
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as true
    trigger_names = set(triggers) if isinstance(triggers, dict | list) else {triggers}
    assert {"push", "pull_request"} <= trigger_names

    job = next((j for j in wf["jobs"].values()
                if any("make test" in str(s.get("run", "")) for s in j.get("steps", []))), None)
    assert job is not None, "no job runs `make test`"
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    uses = {str(s.get("uses", "")).split("@")[0]: s for s in steps if "uses" in s}
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert str(uses["actions/setup-node"]["with"]["node-version"]) == "20"
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    assert "apt-get update" in runs
    for pkg in ("redis-server", "thrift-compiler", "golang-go", "golang-thrift-dev"):
        assert re.search(rf"apt-get install[^\n]*\b{pkg}\b", runs), f"CI does not install {pkg}"
    make_step = next(s for s in steps if "make test" in str(s.get("run", "")))
    env = {**(wf.get("env") or {}), **(job.get("env") or {}), **(make_step.get("env") or {})}
    assert str(env.get("CI", "")).lower() == "true", "make test must run with CI=true"


# --- optional: docker compose's own validation ---------------------------------------------------


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or Debian's `docker-compose`: both validate without an engine."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def _compose_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cli = _compose_cli()
    need_tool(cli is not None, "neither `docker compose` nor `docker-compose` is installed")
    assert cli is not None
    environ = {k: v for k, v in os.environ.items() if k != "GATEWAY_JWT_SECRET"}
    return subprocess.run([*cli, "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**environ, **env})


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TEST], ids=lambda p: p.name)
def test_docker_compose_config_validates(path):
    """Compose's own schema validation; .ci/run installs Debian's docker-compose for it."""
    result = _compose_config(path, GATEWAY_JWT_SECRET="x" * 64)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TEST], ids=lambda p: p.name)
def test_docker_compose_refuses_to_start_without_the_jwt_secret(path):
    result = _compose_config(path)
    assert result.returncode != 0
    assert "GATEWAY_JWT_SECRET" in result.stderr


# --- authentication ----------------------------------------------------------------------------

SECRET_REF = re.compile(r"\$\{GATEWAY_JWT_SECRET:\?[^}]+\}")


def test_gateway_auth_is_on_with_the_secret_from_the_environment(any_compose):
    env = env_of(any_compose["gateway"])
    assert env.get("GATEWAY_AUTH", "").lower() == "true", "authentication is off in the deployment"
    # Never a literal secret in the repo, never a silent default: `${VAR:?message}` only.
    assert SECRET_REF.fullmatch(env.get("GATEWAY_JWT_SECRET", "")), env.get("GATEWAY_JWT_SECRET")


def test_test_stack_smoke_check_signs_with_the_gateway_secret(compose_test):
    assert env_of(compose_test["tests"]).get("GATEWAY_JWT_SECRET") == env_of(compose_test["gateway"])["GATEWAY_JWT_SECRET"]


# --- the smoke script, against a local stack ---------------------------------------------------


def test_smoke_script_against_local_stack(gateway_url):
    """deploy/smoke.py (the test stack's `tests` service) passes against real local processes.

    Fails until the gateway lands.
    """
    result = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "GATEWAY_URL": gateway_url, "SMOKE_WAIT": "10"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


def test_smoke_script_against_local_stack_with_auth(logdir, chatsvc_proc):
    """As the test stack runs it: the gateway with GATEWAY_AUTH on, smoke.py with the same secret."""
    secret = "s" * 32
    gateway = start_gateway(logdir, chatsvc_proc.addr, env={"GATEWAY_AUTH": "true", "GATEWAY_JWT_SECRET": secret})
    try:
        url = f"http://127.0.0.1:{gateway.port}"
        env = {**os.environ, "GATEWAY_URL": url, "SMOKE_WAIT": "10"}
        env.pop("GATEWAY_JWT_SECRET", None)
        refused = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 1 and "401" in refused.stderr, refused.stdout + refused.stderr
        result = subprocess.run([sys.executable, str(SMOKE)], capture_output=True, text=True, timeout=60,
                                env={**env, "GATEWAY_JWT_SECRET": secret})
        assert result.returncode == 0, result.stdout + result.stderr + gateway.output()
    finally:
        gateway.kill()


# --- docker-compose.cluster.yml: the same stack on a 6-node Redis Cluster ------------------------

COMPOSE_CLUSTER = DEPLOY / "docker-compose.cluster.yml"
REDIS_CLUSTER_CONF = DEPLOY / "redis-cluster.conf"
CLUSTER_NODES = tuple(f"redis-{i}" for i in range(1, 7))
CLUSTER_INIT = "redis-cluster-init"
CLUSTER_REPLICAS = 1


def conf_directives(path: Path) -> dict[str, list[str]]:
    """Directive -> its last value (as words), from a redis.conf-style file."""
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    conf: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, *args = shlex.split(line)
            conf[key.lower()] = args
    return conf


def mounts_of(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a path relative to deploy/, or a volume name)."""
    out = {}
    for vol in svc.get("volumes") or []:
        source, target, *_ = vol.split(":") if isinstance(vol, str) else (vol.get("source"), vol.get("target"))
        out[target] = source
    return out


@pytest.fixture(scope="module")
def compose_cluster_doc() -> dict[str, Any]:
    return load_yaml(COMPOSE_CLUSTER)


@pytest.fixture(scope="module")
def compose_cluster(compose_cluster_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return services(compose_cluster_doc)


def cluster_node_ips(compose_cluster: dict[str, dict[str, Any]]) -> dict[str, str]:
    ips = {}
    for name in CLUSTER_NODES:
        nets = compose_cluster[name].get("networks")
        assert isinstance(nets, dict) and list(nets) == ["backend"], f"{name}: networks {nets}"
        ips[name] = nets["backend"]["ipv4_address"]
    return ips


def test_cluster_stack_services(compose_cluster):
    assert set(compose_cluster) == {*CLUSTER_NODES, CLUSTER_INIT, "chatsvc", "gateway"}
    masters, rest = divmod(len(CLUSTER_NODES), 1 + CLUSTER_REPLICAS)
    assert masters >= 3 and rest == 0, "a Redis Cluster needs 3+ masters, each with its replicas"


def test_cluster_nodes_run_the_cluster_conf_over_redis_conf(compose_cluster, compose_cluster_doc):
    conf = conf_directives(REDIS_CLUSTER_CONF)
    assert conf.get("cluster-enabled") == ["yes"]
    assert int(conf["cluster-node-timeout"][0]) > 0
    assert "/" not in conf["cluster-config-file"][0], "nodes.conf must live in dir (/data, the volume)"
    [included] = conf["include"]
    data_volumes = set()
    for name in CLUSTER_NODES:
        svc = compose_cluster[name]
        assert svc.get("image", "").startswith("redis:7"), name
        argv = argv_of(svc.get("command"))
        assert argv[0] == "redis-server", argv
        mounts = mounts_of(svc)
        assert (DEPLOY / mounts[argv[1]]).resolve() == REDIS_CLUSTER_CONF.resolve(), f"{name} runs {argv[1]}"
        assert (DEPLOY / mounts[included]).resolve() == REDIS_CONF.resolve(), f"{name}: {included} is not redis.conf"
        # Each node announces its own service name (CLUSTER SLOTS and MOVED carry hostnames).
        assert argv[argv.index("--cluster-announce-hostname") + 1] == name
        volume = mounts["/data"]
        assert volume in (compose_cluster_doc.get("volumes") or {}), f"{name}: /data is not a named volume"
        data_volumes.add(volume)
    assert len(data_volumes) == len(CLUSTER_NODES), "every node needs its own /data (AOF and nodes.conf)"
    assert conf.get("cluster-preferred-endpoint-type") == ["hostname"]
    assert redis_conf().get("appendonly") == ["yes"] and redis_conf().get("dir") == ["/data"]


def test_cluster_init_creates_the_cluster_from_every_node(compose_cluster, compose_cluster_doc):
    import ipaddress

    ips = cluster_node_ips(compose_cluster)
    assert len(set(ips.values())) == len(ips)
    [ipam] = compose_cluster_doc["networks"]["backend"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
    for name, ip in ips.items():
        assert ipaddress.ip_address(ip) in subnet and ipaddress.ip_address(ip) not in dynamic, (name, ip)
    port = int(redis_conf().get("port", [REDIS_DEFAULT_PORT])[0])

    init = compose_cluster[CLUSTER_INIT]
    script = " ".join(argv_of(init.get("command")))
    create = re.search(r"redis-cli --cluster create ((?:\S+:\d+ )+)--cluster-replicas (\d+) --cluster-yes", script)
    assert create, script
    assert create.group(1).split() == [f"{ips[n]}:{port}" for n in CLUSTER_NODES]
    assert int(create.group(2)) == CLUSTER_REPLICAS
    assert "cluster_state:ok" in script and all(n in script for n in CLUSTER_NODES), "init must wait for every node"
    assert "cluster_known_nodes" in script, "init must not try to create an existing cluster again"
    assert depends_on(init) == {n: "service_healthy" for n in CLUSTER_NODES}
    assert init.get("restart") == "no" and not init.get("ports") and not init.get("healthcheck")
    assert init.get("image") == compose_cluster[CLUSTER_NODES[0]].get("image")


def test_cluster_chatsvc_uses_every_node_as_a_startup_node(compose_cluster):
    from chatsvc import config
    from chatsvc.storage import is_cluster_url, parse_cluster_url

    env = env_of(compose_cluster["chatsvc"])
    url = env["REDIS_URL"]
    port = int(redis_conf().get("port", [REDIS_DEFAULT_PORT])[0])
    assert is_cluster_url(url)
    assert parse_cluster_url(url).nodes == tuple((n, port) for n in CLUSTER_NODES)
    assert config.load(ChatsvcSettings, [], env).redis_cluster_mode
    assert depends_on(compose_cluster["chatsvc"]) == {CLUSTER_INIT: "service_completed_successfully"}


def test_cluster_stack_keeps_chatsvc_and_gateway_in_step_with_compose(compose, compose_cluster):
    """Only REDIS_URL (and what chatsvc waits for) differ from docker-compose.yml."""
    for name in ("chatsvc", "gateway"):
        real, clustered = compose[name], compose_cluster[name]
        for key in ("command", "healthcheck", "build", "image", "restart", "init", "stop_grace_period", "ports",
                    "expose", "networks"):
            assert clustered.get(key) == real.get(key), f"{name}: {key} differs from docker-compose.yml"
        real_env, cluster_env = env_of(real), env_of(clustered)
        if name == "chatsvc":
            real_env.pop("REDIS_URL"), cluster_env.pop("REDIS_URL")
        assert cluster_env == real_env, name
    assert depends_on(compose_cluster["gateway"]) == depends_on(compose["gateway"])


def test_cluster_stack_healthchecks_networks_and_ports(compose_cluster, compose_cluster_doc):
    nets = compose_cluster_doc.get("networks") or {}
    for name, svc in compose_cluster.items():
        if name != CLUSTER_INIT:
            check = svc.get("healthcheck")
            assert check and argv_of(check["test"])[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        for dep, condition in depends_on(svc).items():
            assert dep in compose_cluster, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert compose_cluster[dep].get("healthcheck"), f"{name} waits for {dep}'s health: it has none"
        if name != "gateway":
            assert not svc.get("ports"), f"{name} publishes ports"
            for net in svc.get("networks") or ["default"]:
                assert (nets.get(net) or {}).get("internal") is True, f"{name} on non-internal network {net}"
        for source in mounts_of(svc).values():
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    for name in CLUSTER_NODES:
        assert "redis-cli ping" in healthcheck_text(compose_cluster[name])
        assert compose_cluster[name].get("restart") == "unless-stopped"
    assert depends_on(compose_cluster["gateway"]).get("chatsvc") == "service_healthy"


def test_docker_compose_config_validates_the_cluster_stack():
    """Compose's own schema validation (as for docker-compose.yml and docker-compose.test.yml)."""
    result = _compose_config(COMPOSE_CLUSTER, GATEWAY_JWT_SECRET="x" * 64)
    assert result.returncode == 0, result.stderr
    assert _compose_config(COMPOSE_CLUSTER).returncode != 0, "the cluster stack starts without GATEWAY_JWT_SECRET"
