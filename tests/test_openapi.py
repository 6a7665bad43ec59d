"""The OpenAPI document: valid OpenAPI 3.1, in step with the routes and the errors the code raises, and
served by the api. The fuzz run against a live api process is in tests/test_openapi_fuzz.py."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
from openapi_spec_validator import OpenAPIV31SpecValidator

from api.app import ROUTES
from api.errors import STATUSES
from api.openapi import AREAS, build_document, operations
from daemon import errors as domain
from daemon.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "api"
# Domain errors whose code is fixed by their class; the others take it as their first argument, but
# Unavailable (message, retry_after_s, code="unavailable").
FIXED_CODES = {"KeyReused": "idempotency_key_reused", "MemoryFull": "redis_memory_full"}
# Answers that no operation promises: an unexpected failure, and a method a path does not have.
UNDOCUMENTED = {(500, "internal_error"), (405, "method_not_allowed")}


def _document(**overrides: object) -> dict:
    return build_document(Settings.from_env({}, **overrides))


def _documented_errors(paths: dict) -> set[tuple[int, str]]:
    """(status, code) of every Error response in ``paths``."""
    found = set()
    for item in paths.values():
        for op in item.values():
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                for part in schema.get("allOf", []):
                    for code in part.get("properties", {}).get("error", {}).get("enum", []):
                        found.add((int(status), code))
    return found


def _raised_errors(files: list[Path]) -> set[tuple[int, str]]:
    """(status, code) of every ApiError the modules construct with a literal code, directly or through
    a helper whose code is a parameter (``unauthorized(code, ...)``, ``_invalid(index, code, ...)``),
    plus the router's 404 (errors.py's ``_HTTP_CODES``)."""
    trees = [ast.parse(f.read_text()) for f in files]
    helpers: dict[str, tuple[int, int]] = {}  # function name -> (status, position of its code parameter)
    for tree in trees:
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            params = [a.arg for a in func.args.args]
            for call in ast.walk(func):
                if _is_api_error(call) and isinstance(call.args[1], ast.Name) and call.args[1].id in params:
                    helpers[func.name] = (call.args[0].value, params.index(call.args[1].id))
    raised = set()
    for tree in trees:
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            if (found := _domain_error(call)) is not None:
                raised.add(found)
            if _is_api_error(call) and isinstance(call.args[1], ast.Constant):
                raised.add((call.args[0].value, call.args[1].value))
            name = getattr(call.func, "id", None)
            if name in helpers:
                status, position = helpers[name]
                code = call.args[position] if len(call.args) > position else None
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    raised.add((status, code.value))
    return raised


def _domain_error(call: ast.Call) -> tuple[int, str] | None:
    """(status, code) of a domain error constructed with a literal code (daemon/errors.py), its status
    as api/errors.py maps it."""
    cls = getattr(domain, getattr(call.func, "id", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, domain.DomainError)) or cls.__name__ == "ApiError":
        return None
    status = next(STATUSES[c] for c in cls.__mro__ if c in STATUSES)
    if cls.__name__ in FIXED_CODES:
        return status, FIXED_CODES[cls.__name__]
    if issubclass(cls, domain.Unavailable):
        code = next((k.value for k in call.keywords if k.arg == "code"), None)
        code = code or (call.args[2] if len(call.args) > 2 else ast.Constant("unavailable"))
    else:
        code = call.args[0] if call.args else None
    if isinstance(code, ast.Constant) and isinstance(code.value, str):
        return status, code.value
    return None


def _core_modules(source: Path) -> list[Path]:
    """The daemon/ modules an api module imports (where its domain errors are raised)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("daemon"):
            if node.module == "daemon":
                names = [f"daemon/{a.name}.py" for a in node.names]
            else:
                names = [node.module.replace(".", "/") + ".py"]
            found += [ROOT / n for n in names if (ROOT / n).is_file()]
    return found


def _is_api_error(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "ApiError"
        and len(node.args) >= 2
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, int)
    )


def test_the_document_is_valid_openapi_3_1():
    OpenAPIV31SpecValidator(_document()).validate()


def test_every_route_has_an_operation_and_every_operation_a_route():
    routes = {(route.path, method) for route in ROUTES for method in route.methods or () if method != "HEAD"}

    documented = operations(_document())

    assert routes - documented == set(), "routes without an operation in api/openapi/"
    assert documented - routes == set(), "operations without a route in api.app.ROUTES"


def test_every_path_parameter_of_a_route_is_declared_by_its_operations():
    document = _document()
    declared_parameters = document["components"]["parameters"]
    for route in ROUTES:
        names = set(route.param_convertors)
        for method in route.methods or ():
            if method == "HEAD":
                continue
            op = document["paths"][route.path][method.lower()]
            params = [declared_parameters[p["$ref"].rsplit("/", 1)[1]] for p in op.get("parameters", [])]
            assert {p["name"] for p in params if p["in"] == "path"} == names, (route.path, method)


def test_the_error_codes_documented_are_the_ones_the_code_raises():
    core = sorted((ROOT / "daemon").glob("**/*.py"))
    raised = _raised_errors(sorted(API_DIR.glob("*.py")) + core) | {(404, "not_found")}

    documented = _documented_errors(_document()["paths"])

    assert documented - raised == set(), "documented but never raised"
    assert raised - documented - UNDOCUMENTED == set(), "raised but not documented"


def test_each_api_module_s_error_codes_are_documented_in_its_spec_module():
    settings = Settings.from_env({})
    for area in AREAS:
        source = API_DIR / f"{area.__name__.rsplit('.', 1)[1]}.py"
        raised = _raised_errors([source, *_core_modules(source)]) - UNDOCUMENTED

        documented = _documented_errors(area.paths(settings))

        assert raised - documented == set(), f"{source.name} raises errors {area.__name__} does not document"


def test_the_documented_limits_are_the_process_settings():
    document = _document(content_id_max_len=16, watch_seconds_max=600, batch_max_items=50)

    item_id = document["components"]["schemas"]["Id"]
    batch = document["paths"]["/api/v1/views/batch"]["post"]["requestBody"]["content"]["application/msgpack"]
    assert (item_id["maxLength"], item_id["pattern"]) == (16, "^[A-Za-z0-9_.:-]{1,16}$")
    items, columns = batch["schema"]["oneOf"]
    assert items["maxItems"] == 50
    assert items["items"]["properties"]["watch_seconds"]["maximum"] == 600
    assert {name: column["maxItems"] for name, column in columns["properties"].items()} == dict.fromkeys(
        ("content_id", "user_id", "watch_seconds", "event_type", "session_id"), 50
    )
    assert columns["properties"]["watch_seconds"]["items"]["maximum"] == 600


def test_the_api_serves_the_document_of_its_own_settings(start_api, migrated):
    api = start_api(migrated.replace(content_id_max_len=64))

    response = httpx.get(f"{api.base_url}/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == build_document(api.settings)
    assert response.json()["components"]["schemas"]["Id"]["maxLength"] == 64


def test_a_405_lists_every_method_of_the_path_in_allow(api):
    # Found by schemathesis (allow_header_conformance): /like has POST and DELETE on two routes, and
    # Starlette's 405 named only the first route's POST.
    for path, allowed in [
        ("/api/v1/content/video-1/like", "DELETE, POST"),
        ("/api/v1/content/video-1/dislike", "DELETE, POST"),
        ("/api/v1/creators/studio-1/subscribe", "DELETE, POST"),
        ("/api/v1/creators/studio-1", "GET, HEAD"),
        ("/api/v1/views/batch", "POST"),
    ]:
        response = api.client.request("PATCH", path)

        assert (response.status_code, response.headers["allow"]) == (405, allowed), path
        assert response.json()["error"] == "method_not_allowed"
