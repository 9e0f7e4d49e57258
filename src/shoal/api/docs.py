"""Models that only describe responses in the OpenAPI document."""

from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from shoal.model.registry import KindInfo


class StatusDetails(BaseModel):
    model_config = ConfigDict(extra="allow")


class Status(BaseModel):
    apiVersion: str = "v1"
    kind: str = "Status"
    status: str = "Failure"
    reason: str
    message: str
    code: int
    details: StatusDetails | None = None


def list_model(info: KindInfo) -> type[BaseModel]:
    from pydantic import Field

    meta = create_model(
        f"{info.kind}ListMeta",
        resourceVersion=(str, ...),
        continue_=(str | None, Field(default=None, alias="continue")),
    )
    return create_model(
        f"{info.kind}List",
        apiVersion=(str, ...),
        kind=(str, ...),
        metadata=(meta, ...),
        items=(list[info.model], ...),  # type: ignore[name-defined]
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Status, "description": text}
    for code, text in (
        (400, "bad request"),
        (401, "missing or invalid token"),
        (403, "forbidden"),
        (404, "not found"),
        (409, "conflict"),
        (410, "resourceVersion too old"),
        (422, "invalid object"),
    )
}
