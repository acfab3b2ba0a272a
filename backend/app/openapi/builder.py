"""The OpenAPI 3.1 document, built by walking the app's routes and reading each
endpoint's `@documented` Operation; schemas are pydantic's JSON Schema of the models
the handlers read and answer. Nothing here is written by hand per route."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Mount, Route

from app.config import Settings
from app.openapi.api import OPTIONAL, Empty, Operation, Raw, operation_of
from app.openapi.deployment import apply_settings
from app.openapi.schemas.errors import Error

REF = "#/components/schemas/{model}"

# Paths served that are not REST operations, each with why it is not described.
EXCLUDED: dict[str, str] = {
    "/ws": "the WebSocket; its frames are described in API.md, not by OpenAPI",
    "/": "the web client's static files (and /sw.js, /admin, /docs)",
    "/openapi.json": "this document itself",
    "/email/verify": "an HTML page and form a mail reader opens from a verification email",
    "/email/unsubscribe": "an HTML page and form (RFC 8058 one-click) linked from a digest",
}

# Statuses every operation of a kind may answer, besides those it documents itself.
AUTH_ERRORS = {401: "no bearer token, or an invalid, expired or revoked one"}
BODY_ERRORS = {
    400: "the body is not JSON, or not a JSON object",
    413: "the body is over MAX_BODY_BYTES",
    422: "a field is missing, of the wrong type or out of range",
}
QUERY_ERRORS = {422: "a query parameter is malformed or out of range"}
# app.web refuses a URL (path or query) holding a NUL before any route sees it.
URL_ERRORS = {422: "the URL's path or query holds a NUL character"}
# app.errors answers any call whose database does not answer in time.
SERVER_ERRORS = {503: "the database is not answering; retry after Retry-After"}

_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_CONVERTORS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "path": {"type": "string", "description": "percent-encoded; may contain '/'"},
    "str": {"type": "string"},
}


def _routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """(full path, route) of every HTTP route, through Mounts and Routers."""
    for route in routes:
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None) or []
            yield from _routes(inner, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, route


def _error_schema() -> dict[str, Any]:
    return {"$ref": REF.format(model=Error.__name__)}


class _Schemas:
    """Every model an operation names, turned into components/schemas in one pass
    (so a model used by several operations is named once)."""

    def __init__(self) -> None:
        self._wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}

    def want(self, model: type[BaseModel], mode: JsonSchemaMode) -> None:
        self._wanted[(model, mode)] = None

    def build(self) -> tuple[dict[Any, Any], dict[str, Any]]:
        """({(model, mode): its $ref schema}, components/schemas)."""
        refs, top = models_json_schema(list(self._wanted), ref_template=REF)
        return dict(refs), top.get("$defs", {})


def _json(schema: Any) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _response(answer: Any, refs: dict[Any, Any]) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"description": answer, "content": _json(_error_schema())}
    if isinstance(answer, Raw):
        schema: dict[str, Any] = {"type": "string"}
        if answer.binary:
            schema["contentMediaType"] = answer.media_type
        return {
            "description": answer.description,
            "content": {answer.media_type: {"schema": schema}},
        }
    if isinstance(answer, Empty):
        return {"description": answer.description}
    model: type[BaseModel] = answer
    description = (model.__doc__ or model.__name__).strip().splitlines()[0]
    return {"description": description, "content": _json(refs[(model, "serialization")])}


# Statuses that tell the client when to try again.
RETRY_STATUSES = frozenset({429, 503})
RETRY_AFTER = {
    "description": "whole seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 0},
}


def _with_headers(status: int, response: dict[str, Any]) -> dict[str, Any]:
    if status in RETRY_STATUSES:
        return {**response, "headers": {"Retry-After": RETRY_AFTER}}
    return response


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without pydantic's wrapping: an absent parameter is
    its default, never a JSON null."""
    choices = prop.get("anyOf")
    if choices and len(choices) == 2 and {"type": "null"} in choices:
        (inner,) = [c for c in choices if c != {"type": "null"}]
        prop = {**prop, **inner}
        prop.pop("anyOf")
        if prop.get("default") is None:
            prop.pop("default", None)
    return {k: v for k, v in prop.items() if k not in ("title", "description")}


def _tidy_names(document: dict[str, Any]) -> dict[str, Any]:
    """pydantic names two models of one name by their modules (app__accounts__RegisterBody):
    name them by their module's last part instead (AccountsRegisterBody)."""
    components = document["components"]["schemas"]
    renames = {}
    for old in components:
        if "__" in old:
            *modules, name = old.split("__")
            renames[old] = modules[-1].title().replace("_", "") + name
    if not renames:
        return document
    text = orjson.dumps(document).decode()
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    tidy: dict[str, Any] = orjson.loads(text)
    tidy["components"]["schemas"] = {
        renames.get(name, name): schema for name, schema in tidy["components"]["schemas"].items()
    }
    return tidy


def _parameters(path: str, operation: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    described = operation.path or {}
    for name, convertor in _PARAM.findall(path):
        schema = dict(_CONVERTORS.get(convertor or "str", {"type": "string"}))
        param: dict[str, Any] = {"name": name, "in": "path", "required": True}
        note = described.get(name) or schema.pop("description", None)
        schema.pop("description", None)
        if note:
            param["description"] = note
        params.append({**param, "schema": schema})
    if operation.query is not None:
        query = operation.query.model_json_schema(ref_template=REF)
        required = set(query.get("required", []))
        for name, prop in query.get("properties", {}).items():
            prop = _plain(prop)
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            note = query["properties"][name].get("description")
            if note:
                param["description"] = note
            params.append(param)
    return params


def _operation_id(method: str, path: str) -> str:
    """get_api_v1_users_user_id for GET /api/v1/users/{user_id:int}."""
    words = re.sub(r"[^A-Za-z0-9]+", "_", _PARAM.sub(r"\1", path)).strip("_")
    return f"{method.lower()}_{words}"


def _operation(
    method: str, path: str, endpoint: Any, operation: Operation, refs: dict[Any, Any]
) -> dict[str, Any]:
    answers: dict[int, Any] = {**SERVER_ERRORS, **URL_ERRORS}
    if operation.auth:
        answers.update(AUTH_ERRORS)
    if operation.query is not None:
        answers.update(QUERY_ERRORS)
    if operation.body is not None:
        answers.update(BODY_ERRORS)
    answers.update(operation.responses)
    out: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": operation.summary,
        "tags": list(operation.tags),
        "responses": {
            str(s): _with_headers(s, _response(answers[s], refs)) for s in sorted(answers)
        },
    }
    if operation.description:
        out["description"] = operation.description
    params = _parameters(path, operation)
    if params:
        out["parameters"] = params
    if operation.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                operation.body_media_type: {"schema": refs[(operation.body, "validation")]}
            },
        }
    out["security"] = _security(operation)
    return out


def _security(operation: Operation) -> list[dict[str, list[str]]]:
    """A bearer token; a bearer or none (`{}`: the call's own token in the body); none."""
    if operation.auth == OPTIONAL:
        return [{"bearer": []}, {}]
    return [{"bearer": []}] if operation.auth else []


def _app_version() -> str:
    try:
        return version("messenger")
    except PackageNotFoundError:
        return "0"


def build_document(routes: Sequence[BaseRoute], settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every documented route in `routes`; with
    `settings`, limits that are settings hold that deployment's values."""
    found: list[tuple[str, str, Any, Operation]] = []
    schemas = _Schemas()
    schemas.want(Error, "serialization")
    for full_path, route in _routes(routes):
        operation = operation_of(route.endpoint)
        if operation is None or full_path in EXCLUDED:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, full_path, route.endpoint, operation))
        if operation.body is not None:
            schemas.want(operation.body, "validation")
        for answer in operation.responses.values():
            if isinstance(answer, type) and issubclass(answer, BaseModel):
                schemas.want(answer, "serialization")
    refs, components = schemas.build()
    apply_settings(components, settings)
    paths: dict[str, dict[str, Any]] = {}
    for method, full_path, endpoint, operation in found:
        openapi_path = _PARAM.sub(r"{\1}", full_path)
        item = paths.setdefault(openapi_path, {})
        item[method.lower()] = _operation(method, full_path, endpoint, operation, refs)
    return _tidy_names(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Messenger",
                "version": _app_version(),
                "description": (
                    "The REST API of the messenger. Every error answers "
                    '`{"error": {"code", "message"}}`; 429 answers carry `Retry-After`. '
                    "The WebSocket (`/ws`) and its frames are described in the project's API.md."
                ),
            },
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "the access_token of /api/v1/auth/login or /auth/refresh",
                    }
                },
            },
        }
    )
