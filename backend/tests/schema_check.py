"""Every JSON answer a test receives, held to the OpenAPI document.

The document is built once per test session from a fresh app's routes. A response
event hook (`EVENT_HOOKS`, given to each test's httpx2.AsyncClient) finds the operation
of each request by its method and path, as the app's router would, and fails the call
when the status is not one the operation documents, or when a JSON body does not match
that status's schema. Routes the document leaves out (EXCLUDED) and paths of no route
are not checked; a body that is not application/json is never read here, so streamed
downloads stay streamed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import httpx2
import jsonschema
from starlette.routing import compile_path

from app.config import Settings
from app.main import create_app
from app.openapi.builder import _routes, build_document

# An error nobody expected answers 500 from any route: never documented per operation,
# its body is still the one error body.
UNEXPECTED = 500
ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}


class SchemaMismatch(AssertionError):
    """A response that its operation's description does not allow."""


@dataclass(frozen=True)
class _Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    key: str  # "GET /api/v1/users/{user_id}": the document's path of the route


def _closed(schema: Any) -> Any:
    """A copy of `schema` where every object with properties allows no other field:
    a field the handler sends must be documented (the published schemas leave room for
    fields added later, as API.md promises clients)."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


class SchemaCheck:
    """The document of one app's routes, and what it allows each (method, path) to answer."""

    def __init__(self, routes: Any) -> None:
        self.document = build_document(routes)
        self._components = _closed(self.document["components"])
        self._validators: dict[tuple[str, int], jsonschema.Draft202012Validator] = {}
        self._routes: list[_Route] = []
        for full_path, route in _routes(routes):
            pattern, openapi_path, _ = compile_path(full_path)
            if openapi_path in self.document["paths"]:
                methods = frozenset((route.methods or set()) - {"HEAD"})
                self._routes.append(_Route(methods, pattern, openapi_path))

    def operation_key(self, method: str, path: str) -> str | None:
        """The documented operation ("METHOD /template") the router would send this
        request to; None for excluded routes and paths of no route."""
        for route in self._routes:
            if method in route.methods and route.pattern.match(path):
                return f"{method} {route.key}"
        return None

    def problems(self, key: str, status: int, media_type: str, body: Any) -> list[str]:
        """What is wrong with answering `status` with this body to the operation `key`
        ("METHOD /template"); `body` is only read for application/json."""
        method, template = key.split(" ", 1)
        responses = self.document["paths"][template][method.lower()]["responses"]
        documented = responses.get(str(status))
        if documented is None:
            if status != UNEXPECTED:
                return [f"status {status} is not documented (documented: {', '.join(responses)})"]
            content: dict[str, Any] = {"application/json": {"schema": ERROR_SCHEMA}}
        else:
            content = documented.get("content") or {}
        if media_type != "application/json":
            if list(content) == ["application/json"]:
                return [f"a body of type {media_type or 'none'}, where JSON is documented"]
            return []
        if "application/json" not in content:
            return [f"a JSON body, where the document says {sorted(content) or 'no body'}"]
        validator = self._validator(key, status, content["application/json"]["schema"])
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        return [f"at {list(e.absolute_path)}: {e.message}" for e in errors[:5]]

    def _validator(
        self, key: str, status: int, schema: dict[str, Any]
    ) -> jsonschema.Draft202012Validator:
        """Compiled once per operation and status: the suite checks thousands of answers."""
        validator = self._validators.get((key, status))
        if validator is None:
            validator = jsonschema.Draft202012Validator(
                {**schema, "components": self._components},
                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
            )
            self._validators[(key, status)] = validator
        return validator


@functools.cache
def session_check() -> SchemaCheck:
    """The session's SchemaCheck, of a fresh app's routes: they do not depend on the
    settings (only request limits do, and answers are what is checked)."""
    settings = Settings(
        _env_file=None, database_url="sqlite+aiosqlite:///:memory:", secret_key="s" * 48
    )
    return SchemaCheck(create_app(settings).routes)


async def check_response(response: httpx2.Response) -> None:
    """httpx2 response hook: raise SchemaMismatch, in the test that made the call, for an
    answer its operation does not document."""
    request = response.request
    check = session_check()
    key = check.operation_key(request.method, request.url.path)
    if key is None:
        return
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    body: Any = None
    if media_type == "application/json":
        await response.aread()
        try:
            body = response.json()
        except ValueError as exc:
            raise SchemaMismatch(
                f"{request.method} {request.url.path} answered {response.status_code} "
                f"as application/json, which is no JSON: {exc}"
            ) from exc
    problems = check.problems(key, response.status_code, media_type, body)
    if problems:
        raise SchemaMismatch(
            f"{request.method} {request.url.path} answered {response.status_code}, "
            f"which {key} does not document: " + "; ".join(problems)
        )


# For httpx2.AsyncClient(event_hooks=EVENT_HOOKS): the client copies the lists.
EVENT_HOOKS: dict[str, list[Any]] = {"response": [check_response]}
