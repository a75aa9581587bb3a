"""The guard as an HTTP service, for upload pipelines that are not written in Python.

    pip install 'diffusion-guard[server]'
    guard serve --bank BANK --state STATE [--port 8080] [--allow-path /srv/uploads]

Every route calls the one `Guard` and answers with the verdict contract's JSON (DESIGN.md).
The HTTP status says whether the *request* worked (200; 400 a bad request, a bad query
parameter included; 401 no or a wrong token; 403 a path the service may not read; 404 a path
below an allowed folder that does not exist; 413 too large), never what was decided: read ``action`` (also in the
``X-Guard-Action`` header). Routes:

- ``GET /healthz``: the versions every verdict is stamped with;
- ``POST /v1/prompt``: ``{"text", "negative"?, "account"?}``;
- ``POST /v1/images``: ``{"images": [{"data": base64, "name"?}], "surface"?, "account"?}``;
- ``POST /v1/image?surface=&account=&name=``: the image's bytes as the body;
- ``POST /v1/model?account=&name=&trigger_words=&metadata_only=``: a model file's bytes as
  the body, streamed to a temporary file (never held in memory, never unpickled);
- ``POST /v1/model/path``, ``/v1/dataset/path``, ``/v1/publication/path``: ``{"path",
  "account"?}`` for files the pipeline already stored, only below ``--allow-path`` folders;
- ``POST /v1/takedown/path``: ``{"path", "notice", "character"?, "reason"?}`` puts a stored
  model file, image or publication on the takedown list (needs a state folder).

With a token (``--token-file`` or ``GUARD_TOKEN``), every ``/v1`` route wants
``Authorization: Bearer <token>``; ``/healthz`` stays open for load balancers. ``/docs``
(Swagger UI) and ``/redoc`` are served from the package's own files (no CDN), from the
OpenAPI schema at ``/openapi.json``.

Checks run on worker threads, so one slow model file does not hold up prompts. File checks
(models, datasets, publications, takedowns) share a few slots, as many as a catalog scan
would run processes: each keeps two cores busy and a read buffer of up to 512 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import binascii
import hmac
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline

from guard.errors import ConfigError, PathNotAllowed
from guard.facade import Guard
from guard.adapters.scan import default_workers
from guard.adapters import service_schema as schema
from guard.adapters.service_schema import ERRORS, binary_body, json_body
from guard.verdict import Verdict

#: Largest model file accepted as a request body (a full SDXL checkpoint is ~7 GB).
MAX_MODEL_BYTES = 16 << 30
#: Largest image body, and largest JSON body of images (base64 makes them a third larger).
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGES = 256
#: Largest JSON body of the routes that carry no file (a prompt, a path).
_SMALL_JSON = 1 << 20


def create_app(guard: Guard, *, allow_paths: Sequence[str | os.PathLike] = (), token: str | None = None,
               max_model_bytes: int = MAX_MODEL_BYTES, max_image_bytes: int = MAX_IMAGE_BYTES,
               file_slots: int | None = None) -> FastAPI:
    """The service around ``guard``. ``allow_paths``: folders the ``…/path`` routes may read;
    ``token``: the bearer token every ``/v1`` route wants (none: no check); ``file_slots``:
    file checks at once (default: a full catalog scan's worker count)."""
    roots = [Path(p).resolve() for p in allow_paths]
    on_file_slot = functools.partial(_threaded, slots=anyio.CapacityLimiter(
        file_slots or default_workers(0, metadata_only=False)))

    expected = token.encode() if token else None
    bearer = HTTPBearer(auto_error=False, description="the token given to guard serve (--token-file / GUARD_TOKEN)")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if expected is not None and not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is required",
                                headers={"WWW-Authenticate": "Bearer"})

    # Swagger UI and ReDoc from files in the package: a service behind a firewall has docs too.
    app = FastAPIOffline(title="diffusion-guard", version=guard.versions["guard"],
                         description="Checks for diffusion platforms. The HTTP status says whether the request "
                                     "worked; what was decided is the verdict's `action` (and `X-Guard-Action`).")
    app.add_exception_handler(RequestValidationError, _bad_query)
    app.openapi = functools.partial(_openapi, app)
    # /healthz stays open for load balancers
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)], responses=ERRORS)
    verdict_route = functools.partial(v1.post, response_model=schema.VerdictModel)

    @app.get("/healthz", response_model=schema.HealthModel)
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "versions": guard.versions}

    prompts = _PromptBatches(guard)

    @verdict_route("/prompt", openapi_extra=json_body(schema.PromptRequest))
    async def prompt(request: Request) -> JSONResponse:
        body = await _json(request, _SMALL_JSON)
        verdict = await prompts.check(_field(body, "text", str), _field(body, "negative", str, None),
                                      _field(body, "account", str, None))
        return _answer(verdict)

    @v1.post("/images", response_model=schema.ImagesVerdictModel, openapi_extra=json_body(schema.ImagesRequest))
    async def images(request: Request) -> JSONResponse:
        body = await _json(request, max_image_bytes * 4 // 3 + 4096)
        items = _field(body, "images", list)
        if not 0 < len(items) <= MAX_IMAGES:
            raise HTTPException(400, f"'images' must hold 1 to {MAX_IMAGES} items")
        data, names = [], []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise HTTPException(400, f"images[{i}] must be an object with 'data'")
            try:
                data.append(base64.b64decode(_field(item, "data", str), validate=True))
            except (binascii.Error, ValueError):
                raise HTTPException(400, f"images[{i}].data is not base64") from None
            names.append(_field(item, "name", str, f"image[{i}]"))
        verdicts = await _check_images(guard, data, names, body.get("surface", "generated_image"),
                                       _field(body, "account", str, None))
        strongest = guard.policy.batch_action(v.action for v in verdicts)
        return JSONResponse({"action": strongest.value, "verdicts": [v.to_dict() for v in verdicts]},
                            headers={"X-Guard-Action": strongest.value})

    @verdict_route("/image", openapi_extra=binary_body("application/octet-stream", "the image file's bytes"))
    async def image(request: Request, surface: str = "generated_image", account: str | None = None,
                    name: str = "image") -> JSONResponse:
        data = await _body(request, max_image_bytes)
        [verdict] = await _check_images(guard, [data], [name], surface, account)
        return _answer(verdict)

    @verdict_route("/model", openapi_extra=binary_body("application/octet-stream", "the model file's bytes "
                                                       "(streamed to a temporary file, never unpickled)"))
    async def model(request: Request, account: str | None = None, name: str = "upload",
                    trigger_words: str = "", metadata_only: bool = False) -> JSONResponse:
        with tempfile.TemporaryDirectory(prefix="guard-upload-") as tmp:
            path = Path(tmp) / "model"
            await _stream_to(request, path, max_model_bytes)
            verdict = await on_file_slot(
                guard.check_model_file, path, account=account, subject=name, metadata_only=metadata_only,
                trigger_words=[w.strip() for w in trigger_words.split(",") if w.strip()])
        return _answer(verdict)

    @verdict_route("/model/path", openapi_extra=json_body(schema.ModelPathRequest))
    async def model_path(request: Request) -> JSONResponse:
        body = await _json(request, _SMALL_JSON)
        path = _allowed(roots, _field(body, "path", str))
        words = _field(body, "trigger_words", list, [])
        if not all(isinstance(w, str) for w in words):
            raise HTTPException(400, "'trigger_words' must be a list of strings")
        verdict = await on_file_slot(guard.check_model_file, path, account=_field(body, "account", str, None),
                                     trigger_words=words, metadata_only=_field(body, "metadata_only", bool, False))
        return _answer(verdict)

    @verdict_route("/dataset/path", openapi_extra=json_body(schema.PathRequest))
    async def dataset_path(request: Request) -> JSONResponse:
        body = await _json(request, _SMALL_JSON)
        path = _allowed(roots, _field(body, "path", str))
        verdict, _ = await _confined(on_file_slot, guard.check_dataset, path, _field(body, "account", str, None),
                                     confine=roots)
        return _answer(verdict)

    @verdict_route("/publication/path", openapi_extra=json_body(schema.PathRequest))
    async def publication_path(request: Request) -> JSONResponse:
        body = await _json(request, _SMALL_JSON)
        path = _allowed(roots, _field(body, "path", str))
        verdict = await _confined(on_file_slot, guard.check_publication, path, _field(body, "account", str, None),
                                  confine=roots)
        return _answer(verdict)

    @v1.post("/takedown/path", response_model=schema.TakedownModel, openapi_extra=json_body(schema.TakedownRequest))
    async def takedown_path(request: Request) -> JSONResponse:
        body = await _json(request, _SMALL_JSON)
        path = _allowed(roots, _field(body, "path", str))
        entries = await _confined(on_file_slot, guard.take_down, path, _field(body, "notice", str),
                                  _field(body, "character", str, None), _field(body, "reason", str, None),
                                  confine=roots, operator=_field(body, "operator", str, None) or "service")
        return JSONResponse({"entries": [e.to_dict() for e in entries]})

    app.include_router(v1)
    return app


def serve(guard: Guard, host: str = "127.0.0.1", port: int = 8080, log_config: str | None = "default",
          **options: Any) -> None:
    """Run the service until interrupted (uvicorn, one process: the guard's models load once).
    ``log_config=None`` leaves logging as the caller set it up (e.g. JSON lines); "default"
    is uvicorn's own text format."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    kwargs = {"log_config": LOGGING_CONFIG} if log_config == "default" else {"log_config": None}
    uvicorn.run(create_app(guard, **options), host=host, port=port, log_level="info", **kwargs)


# Helpers -------------------------------------------------------------------------------------
class _PromptBatches:
    """Concurrent ``/v1/prompt`` requests screened together (`Guard.check_prompts`: one
    encoder forward for all their windows). No request waits for others to arrive: those
    that come in while a batch is on its worker thread form the next batch."""

    def __init__(self, guard: Guard, most: int = 64):
        self.guard, self.most = guard, most
        self.pending: list[tuple[str, str | None, str | None, asyncio.Future]] = []
        self.draining: asyncio.Task | None = None

    async def check(self, text: str, negative: str | None, account: str | None) -> Verdict:
        answer = asyncio.get_running_loop().create_future()
        self.pending.append((text, negative, account, answer))
        if self.draining is None or self.draining.done():
            self.draining = asyncio.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:self.most], self.pending[self.most:]
            try:
                verdicts = await _threaded(self.guard.check_prompts, [b[0] for b in batch], [b[1] for b in batch],
                                           [b[2] for b in batch])
            except Exception as exc:  # noqa: BLE001 (configuration errors: each request answers with it)
                for *_, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (*_, answer), verdict in zip(batch, verdicts):
                if not answer.done():  # a client that went away
                    answer.set_result(verdict)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the request bodies the routes read themselves."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in spec["paths"].values():  # a bad query parameter answers 400 (ErrorModel), never 422
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        for model in schema.REQUEST_MODELS:
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[model.__name__] = found
        app.openapi_schema = spec
    return app.openapi_schema


async def _bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A query parameter of the wrong type is a bad request like any other: 400, one sentence."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                         for e in exc.errors())
    return JSONResponse({"detail": problems}, status_code=400)


async def _threaded(fn, *args, slots: anyio.CapacityLimiter | None = None, **kwargs):
    """``fn(*args, **kwargs)`` on a worker thread (of ``slots``, else of the shared pool)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=slots)


async def _check_images(guard: Guard, data: list[bytes], names: list[str], surface: Any,
                        account: Any) -> list[Verdict]:
    if not isinstance(surface, str) or (account is not None and not isinstance(account, str)):
        raise HTTPException(400, "'surface' and 'account' must be strings")
    try:
        return await _threaded(guard.check_images, data, surface=surface, account=account, subjects=names)
    except ValueError as exc:  # a surface that is not an image surface
        raise HTTPException(400, str(exc)) from None


async def _confined(run, fn, *args, **kwargs):
    """A file check whose caller's mistakes answer 4xx: a path the bundle names outside the
    allowed folders 403 (naming it), a missing or unusable item 400."""
    try:
        return await run(fn, *args, **kwargs)
    except PathNotAllowed as exc:
        raise HTTPException(403, str(exc)) from None
    except ConfigError as exc:  # no state folder, an unknown character, a missing or unreadable item
        raise HTTPException(400, str(exc)) from None


def _answer(verdict: Verdict) -> JSONResponse:
    return JSONResponse(verdict.to_dict(), headers={"X-Guard-Action": verdict.action.value})


def _field(body: dict, key: str, kind: type, default: Any = ...) -> Any:
    value = body.get(key, default)
    if value is ...:
        raise HTTPException(400, f"'{key}' is required")
    if value is not default and not isinstance(value, kind):
        raise HTTPException(400, f"'{key}' must be a {kind.__name__}")
    return value


async def _body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: Request, limit: int) -> dict:
    try:
        body = json.loads(await _body(request, limit))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


async def _stream_to(request: Request, path: Path, limit: int) -> None:
    size = 0
    with open(path, "wb") as fh:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"model file over {limit} bytes")
            fh.write(chunk)


def _allowed(roots: Sequence[Path], raw: str) -> Path:
    """``raw`` resolved (links followed), if it lies below one of ``roots``."""
    if not roots:
        raise HTTPException(403, "this service reads no paths (start it with --allow-path DIR)")
    path = Path(raw).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise HTTPException(403, f"{raw} is outside the folders this service may read")
    if not path.exists():  # a typo in a pipeline is not blocked content (only allowed folders are told apart)
        raise HTTPException(404, f"{raw} does not exist")
    return path
