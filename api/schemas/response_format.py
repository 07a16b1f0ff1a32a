"""``response_format`` checked and typed once: the structured-output constraint of a job."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel

from tasks.contract.errors import invalid_request


class JsonObject(BaseModel):
    """Any JSON object."""

    type: Literal["json_object"] = "json_object"

    def payload(self) -> dict[str, Any]:
        return {"type": "json_object"}


class JsonSchema(BaseModel):
    """JSON valid against ``json_schema``."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"type": "json_schema", "schema": self.json_schema}


Constraint = Union[JsonObject, JsonSchema]


def parse_constraint(response_format: Optional[dict[str, Any]]) -> Optional[Constraint]:
    """``response_format`` as a constraint (None for plain text); a 400 naming the bad field."""
    rf = response_format or {}
    kind = rf.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonObject()
    if kind == "json_schema":
        spec = rf.get("json_schema") or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise invalid_request("`response_format.json_schema.schema` must be a JSON schema object.",
                                  param="response_format.json_schema")
        return JsonSchema(json_schema=spec.get("schema") or {})
    raise invalid_request(f"`response_format.type` must be text, json_object or json_schema, not {kind!r}.",
                          param="response_format.type")
