"""`@documented`: what a REST handler takes and answers, for the OpenAPI description.

The decorator only attaches an `Operation` to the handler (its behaviour is unchanged);
`app.openapi.builder` reads it back from each route's endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__openapi__"


@dataclass(frozen=True)
class Raw:
    """A body that is no JSON: file bytes, an HTML page, Prometheus text."""

    media_type: str
    description: str
    binary: bool = True


@dataclass(frozen=True)
class Empty:
    """An answer with no body (a redirect, 304 Not Modified)."""

    description: str


# Whether a call takes a bearer token: True (it must), False (it takes none: register,
# login, a webhook's secret URL) or OPTIONAL (a bearer, or a token of its own in the body).
OPTIONAL: Literal["optional"] = "optional"
Auth = bool | Literal["optional"]

# What a status answers: a model (JSON), an error's description (the error body), or
# a non-JSON body.
Answer = type[BaseModel] | str | Raw | Empty


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Answer]
    tags: tuple[str, ...]
    body: type[BaseModel] | None = None
    # "multipart/form-data" for a file upload (`body` then describes the form's fields).
    body_media_type: str = "application/json"
    query: type[BaseModel] | None = None
    auth: Auth = True
    description: str | None = None
    # Path parameters' descriptions, by name.
    path: Mapping[str, str] | None = None


def documented(
    summary: str,
    *,
    responses: Mapping[int, Answer],
    tags: Sequence[str],
    body: type[BaseModel] | None = None,
    body_media_type: str = "application/json",
    query: type[BaseModel] | None = None,
    auth: Auth = True,
    description: str | None = None,
    path: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Attach an Operation to a handler, returned unchanged."""
    operation = Operation(
        summary=summary,
        responses=dict(responses),
        tags=tuple(tags),
        body=body,
        body_media_type=body_media_type,
        query=query,
        auth=auth,
        description=description,
        path=dict(path) if path else None,
    )

    def attach(handler: F) -> F:
        setattr(handler, ATTRIBUTE, operation)
        return handler

    return attach


def operation_of(endpoint: Any) -> Operation | None:
    """The Operation of a route's endpoint (a function or a bound method), if any."""
    found = getattr(endpoint, ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None
