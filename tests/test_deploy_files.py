"""The deployment files, the README and docs/ stay true to the code.

No Docker engine, Prometheus or Grafana runs here, so these tests check what can be checked without
them: docker-compose.yml against the Settings dataclass and the CLI parser, the Prometheus targets
against the ports the commands open, the Grafana dashboard's PromQL against the metric names the
service really exports, and the README and docs/ against the CLI, the settings and the metrics. The
README stays short, every link between the documents resolves, and every "decision N" the code cites
is a decision of docs/design.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics import ConsumerMetrics
from daemon.engagement_events import EngagementEvents
from daemon.events import USER_ENGAGEMENT_EVENTS, EventProducer, _event_metrics
from daemon.metrics import Metrics
from daemon.proc.cli import build_parser
from daemon.redis_client import SAFE_POLICIES
from daemon.registry import ContentRegistry
from daemon.settings import PREFIX, Settings
from daemon.views.buffer import ViewBuffer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
GRAFANA = ROOT / "grafana"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION_DOC = DOCS / "configuration.md"  # the CLI and every setting
API_DOC = DOCS / "api.md"
OPERATIONS_DOC = DOCS / "operations.md"  # operating notes and the metrics table
DESIGN_DOC = DOCS / "design.md"
README_MAX_LINES = 250
# Where code may cite "docs/design.md, decision N".
CITING_DIRS = ("api", "consumer", "daemon", "flusher", "lua", "loadtest", "tests")
# Folders no repository check looks into: tools' state, not the project's files.
UNTRACKED_DIRS = {".git", ".venv", ".data", ".pytest_cache", ".ruff_cache", ".mypy_cache", "__pycache__"}
TEXT_SUFFIXES = {".py", ".lua", ".md", ".toml", ".yml", ".yaml", ".json", ".sh", ".sql", ".txt", ".cfg"}
TEXT_NAMES = {"Makefile", "Dockerfile", "run"}  # run: .ci/run

ENGAGEMENTD_SERVICES = ("migrate", "topics", "api", "flusher")
ALL_SERVICES = ("redis", "postgres", "kafka", *ENGAGEMENTD_SERVICES, "prometheus", "grafana")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}: compose interpolation.
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# -- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def interpolate(value: object) -> str:
    """What compose passes when the variable is not set in the shell: the default, never the raw text."""

    def default(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        raise AssertionError(f"{match[0]} has no default: docker compose up would fail without it")

    return INTERPOLATION.sub(default, str(value))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(v) for k, v in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def parsed_command(service: dict[str, Any]) -> argparse.Namespace:
    return build_parser().parse_args(command_args(service))


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("engagementd's parser has no subcommands")


def field_env_names() -> set[str]:
    return {PREFIX + f.name.upper() for f in fields(Settings)}


def prometheus_targets() -> dict[str, list[str]]:
    config = load_yaml(GRAFANA / "prometheus.yml")
    return {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboard.json").read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def exposition() -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, sample names) of what an api process exports once it served a request."""
    metrics = Metrics()
    ViewBuffer(Settings.from_env({}), None, metrics)  # type: ignore[arg-type]  # registers itself
    metrics.requests.observe("/api/v1/content/{contentId}/views", "POST", 202, 0.001)
    metrics.label_actions(["like"])  # as Services does for the configured rate limits
    settings = Settings.from_env({})
    registry = ContentRegistry(settings, None, None)  # type: ignore[arg-type]
    EngagementEvents(settings, EventProducer(settings, metrics), registry, metrics)  # registers itself
    # what an api with ENGAGEMENT_KAFKA_BOOTSTRAP set exports once it emitted
    producer = _event_metrics(metrics)
    for counter in (producer.produced, producer.delivered, producer.failures, producer.queue_full):
        counter.labels(USER_ENGAGEMENT_EVENTS)
    producer.dropped.labels(USER_ENGAGEMENT_EVENTS, "shutdown")
    # what engagementd consume exports once it took a batch
    consumer = ConsumerMetrics(metrics.registry)
    for counter in (consumer.consumed, consumer.applied, consumer.duplicates):
        counter.labels("engagement.ingest")
    consumer.dead_letters.labels("engagement.ingest", "malformed")
    consumer.lag.labels("engagement.ingest", "0").set(0)
    text = metrics.render().decode()
    return {
        family.name: (family.type, {s.name for s in family.samples if not s.name.endswith("_created")})
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def metric_names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not metric names
    return set(re.findall(r"\bengagement_[a-z0-9_]+\b", without_strings))


def readme() -> str:
    return README.read_text(encoding="utf-8")


def doc(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def documents() -> list[Path]:
    """The README and every document of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """Markdown without its fenced code blocks and inline code spans (where "](" is not a link)."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (a repeated one gets -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in doc(path).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.+)", line)
        if fenced or not heading:
            continue
        text = re.sub(r"`([^`]*)`", r"\1", heading[1].strip())  # code spans keep their text
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def relative_links(path: Path) -> list[str]:
    """The targets of the markdown links of a file that are not URLs."""
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code(doc(path)))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def repository_text_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in UNTRACKED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                found.append(path)
    return found


def design_decisions() -> list[int]:
    """The numbers of the decisions listed under docs/design.md's "Decisions" heading, in order."""
    section = doc(DESIGN_DOC).split("\n## Decisions\n", 1)[1]
    return [int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.M)]


def decision_citations() -> dict[str, list[tuple[str, int]]]:
    """File -> (the text before the number, the number) of every "decision N" in the code."""
    cited: dict[str, list[tuple[str, int]]] = {}
    for top in CITING_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in (".py", ".lua") and not UNTRACKED_DIRS.intersection(path.parts):
                for match in re.finditer(r"(.{0,16})\bdecision (\d+)", doc(path), flags=re.I):
                    cited.setdefault(str(path.relative_to(ROOT)), []).append((match[1], int(match[2])))
    return cited


# -- docker-compose.yml --------------------------------------------------------------------------


def test_compose_file_parses_and_has_every_service() -> None:
    # Given the compose file, When it is parsed as YAML
    services = compose()["services"]
    # Then every service of the stack is there
    assert set(ALL_SERVICES) <= set(services), sorted(set(ALL_SERVICES) - set(services))


def test_engagementd_services_build_this_repository_and_run_real_cli_commands() -> None:
    services = compose()["services"]
    roles = subcommands()
    for name in ENGAGEMENTD_SERVICES:
        service = services[name]
        assert service["build"] in (".", {"context": "."}), name
        # The command parses with the real CLI parser (the image's entrypoint is `engagementd`)
        args = parsed_command(service)
        assert args.command in roles
    assert parsed_command(services["migrate"]).command == "migrate"
    assert parsed_command(services["api"]).command == "api"
    assert parsed_command(services["api"]).host == "0.0.0.0"  # reachable from other containers
    assert parsed_command(services["flusher"]).command == "flusher"
    assert parsed_command(services["flusher"]).once is False


def test_every_engagement_variable_in_compose_is_a_real_setting() -> None:
    names = field_env_names()
    for name, service in compose()["services"].items():
        env = service_env(service)
        engagement = {k: v for k, v in env.items() if k.startswith(PREFIX)}
        # Then each name maps to a Settings field, and the values parse and validate
        assert set(engagement) <= names, (name, sorted(set(engagement) - names))
        if name in ENGAGEMENTD_SERVICES:
            settings = Settings.from_env(engagement)
            for key, value in engagement.items():
                field = key.removeprefix(PREFIX).lower()
                assert str(getattr(settings, field)) == str(type(getattr(settings, field))(value)), key


def test_engagementd_services_point_at_the_compose_backends() -> None:
    services = compose()["services"]
    postgres_env = service_env(services["postgres"])
    user, password = postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"]
    database = postgres_env["POSTGRES_DB"]
    for name in ENGAGEMENTD_SERVICES:
        settings = Settings.from_env(service_env(services[name]))
        assert settings.database_url == f"postgresql://{user}:{password}@postgres:5432/{database}", name
        assert re.fullmatch(r"redis://redis:6379(/\d+)?", settings.redis_url), name
        assert settings.kafka_bootstrap == "kafka:9092", name
        assert settings.jwt_secret or settings.jwt_public_key, f"{name} could verify no token"
    kafka_env = service_env(services["kafka"])
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_api_and_flusher_agree_on_the_key_layout() -> None:
    services = compose()["services"]
    api = Settings.from_env(service_env(services["api"]))
    flusher = Settings.from_env(service_env(services["flusher"]))
    assert api.shards == flusher.shards


def test_backends_are_configured_as_the_service_needs() -> None:
    services = compose()["services"]
    # Redis keeps drain markers, deltas and live counts across a restart
    redis_command = command_args(services["redis"])
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert services["redis"]["image"].startswith("redis:7")
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "healthcheck" in services["postgres"]
    # Kafka runs in KRaft mode: no ZooKeeper anywhere
    kafka = services["kafka"]
    assert "healthcheck" in kafka
    roles = set(service_env(kafka)["KAFKA_PROCESS_ROLES"].split(","))
    assert roles == {"broker", "controller"}
    assert not any("zookeeper" in name for name in services)


def test_services_start_in_order() -> None:
    services = compose()["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "flusher"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert parsed_command(services["topics"]).command == "topics"
    assert services["api"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_ports_the_commands_open() -> None:
    services = compose()["services"]
    targets = prometheus_targets()
    api_port = parsed_command(services["api"]).port
    flusher_port = parsed_command(services["flusher"]).metrics_port
    assert targets["api"] == [f"api:{api_port}"]
    assert targets["flusher"] == [f"flusher:{flusher_port}"]
    published = {
        name: {str(p).split(":")[-1] for p in services[name].get("ports", [])} for name in ("api", "flusher")
    }
    assert str(api_port) in published["api"]
    assert str(flusher_port) in published["flusher"]


def test_prometheus_and_grafana_get_their_configuration_files() -> None:
    services = compose()["services"]

    def mounts(name: str) -> dict[str, str]:
        found = {}
        for volume in services[name]["volumes"]:
            source, target = str(volume).split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                found[source] = target
        return found

    assert mounts("prometheus")["./grafana/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    grafana = mounts("grafana")
    assert grafana["./grafana/provisioning"] == "/etc/grafana/provisioning"
    # The dashboard file lands in the folder the provider loads from
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "engagementd.yml")["providers"][0]
    assert Path(grafana["./grafana/dashboard.json"]).parent == Path(provider["options"]["path"])


# -- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_entrypoint_is_the_engagementd_script() -> None:
    instructions = dockerfile_instructions()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == [["engagementd"]]
    assert "engagementd" in scripts
    assert instructions[0] == ("FROM", "python:3.11-slim")
    # The default command is a valid invocation
    (cmd,) = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    assert build_parser().parse_args(cmd).command == "api"


def test_dockerfile_runs_as_a_non_root_user_after_installing() -> None:
    instructions = dockerfile_instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    install = next(i for i, (k, rest) in enumerate(instructions) if k == "RUN" and "pip install ." in rest)
    assert install < max(i for i, (k, _) in enumerate(instructions) if k == "USER")


def test_dockerfile_copies_everything_pip_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied: set[str] = set()
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    packages = {name.split(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    assert packages <= copied, sorted(packages - copied)
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


# -- Grafana and Prometheus ----------------------------------------------------------------------


def test_every_metric_in_the_dashboard_is_exported_by_the_service() -> None:
    families = exposition()
    exported = set().union(*(samples for _, samples in families.values()))
    for expr in dashboard_exprs():
        names = metric_names_in(expr)
        assert names, f"no engagement_ metric in {expr!r}"
        assert names <= exported, (expr, sorted(names - exported))
        # histogram_quantile reads the _bucket series of a histogram, never anything else
        if "histogram_quantile" in expr:
            for name in names:
                assert name.endswith("_bucket"), expr
                assert families[name.removesuffix("_bucket")][0] == "histogram", expr


def test_every_exported_metric_has_a_dashboard_panel() -> None:
    used = set().union(*(metric_names_in(expr) for expr in dashboard_exprs()))
    for family, (_, samples) in exposition().items():
        assert samples & used, f"{family} is exported but on no dashboard panel"


def test_dashboard_queries_select_scrape_jobs_that_exist() -> None:
    jobs = set(prometheus_targets())
    for expr in dashboard_exprs():
        for job in re.findall(r'job\s*=~?\s*"([^"]*)"', expr):
            assert job in jobs, (expr, job)
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_dashboard_is_a_grafana_model_on_the_provisioned_datasource() -> None:
    model = dashboard()
    assert model["uid"] and model["title"] and model["schemaVersion"] >= 30
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


# -- README --------------------------------------------------------------------------------------


def test_readme_names_the_two_commands() -> None:
    text = readme()
    assert "make run" in text and "make test" in text


def test_configuration_doc_names_every_cli_subcommand_and_option() -> None:
    text = doc(CONFIGURATION_DOC)
    for name, parser in subcommands().items():
        assert f"engagementd {name}" in text, name
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"engagementd {name} {option}"


def test_configuration_doc_table_lists_every_setting() -> None:
    rows = [line for line in doc(CONFIGURATION_DOC).splitlines() if line.startswith("| `ENGAGEMENT_")]
    in_table = {re.match(r"\| `(ENGAGEMENT_\w+)`", row)[1] for row in rows}  # type: ignore[index]
    assert in_table == field_env_names(), (
        sorted(field_env_names() - in_table),
        sorted(in_table - field_env_names()),
    )


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_readme_and_docs_mention_no_setting_that_does_not_exist(path: Path) -> None:
    mentioned = set(re.findall(r"\bENGAGEMENT_[A-Z0-9_]*[A-Z0-9]\b", doc(path)))
    assert mentioned <= field_env_names(), sorted(mentioned - field_env_names())


@pytest.mark.parametrize("route", ["/api/v1/content/{contentId}/views", "/api/v1/views/batch"])
def test_api_doc_documents_the_view_routes(route: str) -> None:
    assert route in doc(API_DOC)


def test_operations_doc_metrics_table_lists_every_exported_metric() -> None:
    rows = [line for line in doc(OPERATIONS_DOC).splitlines() if line.startswith("| `engagement_")]
    first_cells = [row.split(" | ")[0] for row in rows]
    in_table = {name for cell in first_cells for name in re.findall(r"`(engagement_[a-z0-9_]+)`", cell)}
    families = exposition()
    exported = set()
    for family, (kind, samples) in families.items():
        names = {family, f"{family}_total"} if kind == "counter" else {family}
        assert names & in_table, f"{family} is exported but not in the metrics table of docs/operations.md"
        exported |= names | samples
    assert in_table <= exported, sorted(in_table - exported)


def test_readme_is_short() -> None:
    # The first screen is what it is, the two commands and a curl tour; the reference is in docs/
    lines = readme().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_readme_links_every_document_of_docs() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for target in relative_links(README)}
    for path in sorted(DOCS.glob("*.md")):
        assert path.resolve() in linked, f"README.md does not link {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda path: path.name)
def test_each_doc_starts_with_a_title_and_a_link_back_to_the_readme(path: Path) -> None:
    title, blank, back = doc(path).splitlines()[:3]
    assert title.startswith("# ") and not blank, path.name
    assert "](../README.md)" in back, path.name


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{path.name}: {link} names a file that does not exist"
        if anchor:
            assert file.suffix == ".md", f"{path.name}: {link}"
            assert anchor in heading_anchors(file), f"{path.name}: {link}: no such heading in {file.name}"


def test_design_doc_numbers_its_decisions_in_order() -> None:
    numbers = design_decisions()
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_every_decision_the_code_cites_is_in_the_design_doc() -> None:
    decisions = set(design_decisions())
    cited = decision_citations()
    assert cited, "no code cites a decision: has the citation format changed?"
    for path, citations in cited.items():
        for before, number in citations:
            assert before.endswith("docs/design.md, "), f'{path}: cite "docs/design.md, decision {number}"'
            assert number in decisions, f"{path} cites decision {number}, which docs/design.md lacks"


def test_no_file_cites_a_design_document_that_does_not_exist() -> None:
    stale = "DESIGN" + ".md"  # spelled so that this file does not cite it
    for path in repository_text_files():
        assert stale not in path.read_text(encoding="utf-8", errors="replace"), path.relative_to(ROOT)


def test_every_document_of_docs_the_repository_names_exists() -> None:
    for path in repository_text_files():
        for name in re.findall(r"\bdocs/[\w.-]+\.md\b", path.read_text(encoding="utf-8", errors="replace")):
            assert (ROOT / name).exists(), f"{path.relative_to(ROOT)} names {name}"


def test_compose_redis_bounds_its_memory_and_evicts_only_copies_of_postgres() -> None:
    # Only cold keys carry a TTL (docs/redis-memory.md): a volatile-* policy never evicts unflushed data
    args = command_args(compose()["services"]["redis"])
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert options["--maxmemory-policy"] == "volatile-lru"
    assert options["--maxmemory-policy"] in SAFE_POLICIES
    assert options["--maxmemory"].endswith(("mb", "gb"))
    assert options["--appendonly"] == "yes"
