"""``/v1/checkpoints``: upload, list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response

from app.api.deps import (
    CursorQuery,
    LimitQuery,
    OwnerDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StorageDep,
    UploadOwnerDep,
)
from app.api.problems import problem_responses
from app.api.uploads import multipart_body, receiver, reused_response, sha256_query
from app.schemas.checkpoints import CheckpointOut
from app.schemas.common import Page
from app.services import checkpoints as service
from cartl_core.models import list_models

Sha256Query = Annotated[str | None, sha256_query("checkpoints")]
REUSED_RESPONSE = reused_response(CheckpointOut, "checkpoint", "with the same file name and fields")

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])


@router.post(
    "",
    status_code=201,
    summary="Upload a checkpoint",
    description="Streams the file to storage, then loads it safely in a separate process: a "
    "pickle that would run code, an unknown architecture or weights that do not fit it are "
    "refused with 422 naming the problem, and nothing is kept. Self-describing CARTL "
    "safetensors need no other field; plain state dicts (`.pt`, `.pth`, `.safetensors` "
    "without a CARTL header) need `arch`. The same bytes uploaded again by the same owner "
    "(same sha256), under the same name and with fields that would record the same checkpoint, "
    "are not kept twice: the answer is the checkpoint recorded then, with 200 and "
    "`Upload-Reused: true`.",
    responses={200: REUSED_RESPONSE, **problem_responses(400, 408, 413, 415, 422, 429, 503, 507)},
    openapi_extra=multipart_body(
        {
            "arch": f"Architecture of plain weights: {', '.join(list_models())}.",
            "num_classes": "Class count of plain weights [default: size of the last layer].",
            "in_channels": "Input channels of plain weights [default: from the first convolution].",
            "input_size": "Input side of plain weights [default: 32].",
        }
    ),
)
async def upload_checkpoint(
    request: Request,
    response: Response,
    owner: UploadOwnerDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> CheckpointOut:
    row, created = await service.create_checkpoint(
        factory, settings, storage, owner, receiver(request, storage, settings)
    )
    if not created:
        response.status_code = 200
        response.headers["Upload-Reused"] = "true"
    return CheckpointOut.model_validate(row)


@router.get("", summary="List checkpoints, newest first")
def list_checkpoints(
    owner: OwnerDep,
    session: SessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    sha256: Sha256Query = None,
) -> Page[CheckpointOut]:
    page = service.list_checkpoints(session, owner, limit=limit, cursor=cursor, sha256=sha256)
    return Page[CheckpointOut](
        items=[CheckpointOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )


@router.get("/{checkpoint_id}", summary="Get a checkpoint", responses=problem_responses(404))
def get_checkpoint(checkpoint_id: str, owner: OwnerDep, session: SessionDep) -> CheckpointOut:
    return CheckpointOut.model_validate(service.get_checkpoint(session, owner, checkpoint_id))


@router.delete(
    "/{checkpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a checkpoint and its file",
    responses=problem_responses(
        404,
        409,
        503,
        s409="A queued or running job uses it.",
        s503="The files could not be removed.",
    ),
)
def delete_checkpoint(
    checkpoint_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    service.delete_checkpoint(session, storage, owner, checkpoint_id)
    return Response(status_code=204)
