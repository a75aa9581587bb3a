"""The service's request and response shapes, for its OpenAPI schema (``/openapi.json``,
``/docs``, ``/redoc``). The routes read bodies themselves, so that a bad body answers 400
with one sentence; these models say what a good one looks like."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

ActionName = Literal["allow", "flag", "block"]


class FindingModel(BaseModel):
    subject: str = Field(description="the character (or rule) the finding is about")
    signal: str = Field(description="what measured it: alias, clip_image, file_hash, fingerprint, pickle, ...")
    score: float
    threshold: Optional[float] = Field(None, description="what the policy compared the score with (none: a fixed action)")
    action: ActionName
    evidence: dict[str, Any] = Field(default_factory=dict)


class VerdictModel(BaseModel):
    subject: str
    surface: str
    action: ActionName = Field(description="what to do: the HTTP status never says it (also in X-Guard-Action)")
    findings: list[FindingModel]
    versions: dict[str, str] = Field(description="guard, bank, policy and encoder the verdict was made with")
    error: Optional[str] = Field(None, description="set when the guard itself failed: the action is the fail mode's")
    facts: dict[str, Any] = Field(default_factory=dict)


class ImagesVerdictModel(BaseModel):
    action: ActionName = Field(description="the batch's action under the policy")
    verdicts: list[VerdictModel]


class TakedownEntryModel(BaseModel):
    id: int
    notice: str
    character: Optional[str]
    reason: Optional[str]
    subject: str
    sha256: str
    tensor_sha256: Optional[str]
    fingerprint_layers: int
    fingerprint_scheme: Optional[str]
    pdq: Optional[str]
    created: str


class TakedownModel(BaseModel):
    entries: list[TakedownEntryModel]


class HealthModel(BaseModel):
    status: Literal["ok"]
    versions: dict[str, str]


class ErrorModel(BaseModel):
    detail: str = Field(description="what was wrong with the request, in one sentence")


class PromptRequest(BaseModel):
    text: str = Field(description="the prompt (longer than the policy's max_prompt_chars: a format verdict)")
    negative: Optional[str] = Field(None, description="the negative prompt: names there are a mitigation")
    account: Optional[str] = None


class ImageItem(BaseModel):
    data: str = Field(description="the image file's bytes, base64")
    name: Optional[str] = None


class ImagesRequest(BaseModel):
    images: list[ImageItem] = Field(min_length=1, max_length=256)
    surface: Literal["generated_image", "cover_image", "training_image"] = "generated_image"
    account: Optional[str] = None


class PathRequest(BaseModel):
    path: str = Field(description="a file or folder below one of the service's --allow-path folders")
    account: Optional[str] = None


class ModelPathRequest(PathRequest):
    trigger_words: list[str] = Field(default_factory=list)
    metadata_only: bool = False


class TakedownRequest(BaseModel):
    path: str
    notice: str = Field(description="the notice this answers (ticket id)")
    character: Optional[str] = None
    reason: Optional[str] = None
    operator: Optional[str] = Field(None, description="who asks, for the audit chain (default: service)")


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the route's JSON request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def binary_body(media: str, what: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": what, "content": {
        media: {"schema": {"type": "string", "format": "binary"}}}}}


REQUEST_MODELS = (PromptRequest, ImagesRequest, PathRequest, ModelPathRequest, TakedownRequest, ImageItem)
ERRORS = {400: {"model": ErrorModel, "description": "a bad request"},
          401: {"model": ErrorModel, "description": "no or a wrong bearer token"},
          403: {"model": ErrorModel, "description": "a path the service may not read"},
          404: {"model": ErrorModel, "description": "a path below an allowed folder that does not exist"},
          413: {"model": ErrorModel, "description": "a body over the limit"}}
