"""``/v1/checkpoints`` and ``/v1/datasets``: upload, list, get, delete.

Both are the one resource, uploaded files, of two kinds: :func:`upload_router` makes the routes
of a kind from its :class:`UploadApi`, which adds to the service's :class:`UploadKind` what the
API says of it (its path, response model and documentation).
"""

# No ``from __future__ import annotations``: the endpoints' annotations name values of the
# factory's scope (the kind's path alias and query), which FastAPI must see as objects.

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel

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
from app.schemas.common import Page
from app.schemas.uploads import CheckpointOut, DatasetOut
from app.services.checkpoints import CHECKPOINTS
from app.services.datasets import DATASETS
from app.services.uploads import (
    UploadKind,
    create_upload,
    delete_upload,
    get_upload,
    list_uploads,
)
from cartl_core.data import RESIZE_METHODS
from cartl_core.data._types import MAX_SIDE, MIN_SIDE
from cartl_core.models import list_models

__all__ = ["UploadApi", "checkpoints", "datasets", "upload_router"]


@dataclass(frozen=True)
class UploadApi:
    kind: UploadKind[Any]
    #: The collection's name: its path under ``/v1`` and its OpenAPI tag.
    plural: str
    out: type[BaseModel]
    #: The upload's description in the OpenAPI document.
    description: str
    #: Besides the bytes, what must be the same for an upload to reuse an earlier row.
    reused_when: str
    #: The form fields besides ``file``, each with its description.
    form: dict[str, str] = field(default_factory=dict)


def upload_router(api: UploadApi) -> APIRouter:
    kind, out, name, plural = api.kind, api.out, api.kind.name, api.plural
    page: Any = Page[out]  # type: ignore[valid-type]
    id_path = Annotated[str, Path(alias=f"{name}_id")]
    sha256_filter = Annotated[str | None, sha256_query(plural)]
    router = APIRouter(prefix=f"/v1/{plural}", tags=[plural])

    @router.post(
        "",
        name=f"upload_{name}",
        status_code=201,
        response_model=out,
        summary=f"Upload a {name}",
        description=api.description,
        responses={
            200: reused_response(out, name, api.reused_when),
            **problem_responses(400, 408, 413, 415, 422, 429, 503, 507),
        },
        openapi_extra=multipart_body(api.form),
    )
    async def upload(
        request: Request,
        response: Response,
        owner: UploadOwnerDep,
        factory: SessionFactoryDep,
        settings: SettingsDep,
        storage: StorageDep,
    ) -> BaseModel:
        row, created = await create_upload(
            kind, factory, settings, storage, owner, receiver(request, storage, settings)
        )
        if not created:
            response.status_code = 200
            response.headers["Upload-Reused"] = "true"
        return out.model_validate(row)

    @router.get(
        "", name=f"list_{plural}", response_model=page, summary=f"List {plural}, newest first"
    )
    def list_(
        owner: OwnerDep,
        session: SessionDep,
        limit: LimitQuery = 20,
        cursor: CursorQuery = None,
        sha256: sha256_filter = None,
    ) -> BaseModel:
        rows = list_uploads(kind, session, owner, limit=limit, cursor=cursor, sha256=sha256)
        items = [out.model_validate(r) for r in rows.items]
        result: BaseModel = page(items=items, next_cursor=rows.next_cursor)
        return result

    @router.get(
        f"/{{{name}_id}}",
        name=f"get_{name}",
        response_model=out,
        summary=f"Get a {name}",
        responses=problem_responses(404),
    )
    def get(object_id: id_path, owner: OwnerDep, session: SessionDep) -> BaseModel:
        return out.model_validate(get_upload(kind, session, owner, object_id))

    @router.delete(
        f"/{{{name}_id}}",
        name=f"delete_{name}",
        status_code=204,
        response_class=Response,
        summary=f"Delete a {name} and its file",
        responses=problem_responses(
            404,
            409,
            503,
            s409="A queued or running job uses it.",
            s503="The files could not be removed.",
        ),
    )
    def delete(
        object_id: id_path, owner: OwnerDep, session: SessionDep, storage: StorageDep
    ) -> Response:
        delete_upload(kind, session, storage, owner, object_id)
        return Response(status_code=204)

    return router


checkpoints = upload_router(
    UploadApi(
        kind=CHECKPOINTS,
        plural="checkpoints",
        out=CheckpointOut,
        description="Streams the file to storage, then loads it safely in a separate process: a "
        "pickle that would run code, an unknown architecture or weights that do not fit it are "
        "refused with 422 naming the problem, and nothing is kept. Self-describing CARTL "
        "safetensors need no other field; plain state dicts (`.pt`, `.pth`, `.safetensors` "
        "without a CARTL header) need `arch`. The same bytes uploaded again by the same owner "
        "(same sha256), under the same name and with fields that would record the same "
        "checkpoint, are not kept twice: the answer is the checkpoint recorded then, with 200 "
        "and `Upload-Reused: true`.",
        reused_when="with the same file name and fields",
        form={
            "arch": f"Architecture of plain weights: {', '.join(list_models())}.",
            "num_classes": "Class count of plain weights [default: size of the last layer].",
            "in_channels": "Input channels of plain weights [default: from the first convolution].",
            "input_size": "Input side of plain weights [default: 32].",
        },
    )
)

datasets = upload_router(
    UploadApi(
        kind=DATASETS,
        plural="datasets",
        out=DatasetOut,
        description="Streams the file to storage (any format cartl_core reads: `.npz` with "
        "x_train/y_train/x_test/y_test, ImageFolder `.zip`/`.tar.gz`, the CIFAR-10/100 python "
        "tarballs, SVHN's two `.mat` files in an archive), then loads it in a separate process. "
        "Archives are checked for path traversal, links and decompression bombs before anything "
        "is extracted; labels must fit the classes. Images of several sizes (an ImageFolder) "
        "need `resize`: every image is then resized to that side with `resize_method`, the "
        "answer records both (`resize`, and `input_shape` after it), and every job that reads "
        "the dataset resizes it so. A bad file or field gives 422 naming it, and nothing is "
        "kept. The same bytes uploaded again by the same owner (same sha256) under the same "
        "name and with the same resize are not kept twice: the answer is the dataset recorded "
        "then, with 200 and `Upload-Reused: true`.",
        reused_when="under the same file name and with the same resize",
        form={
            "resize": f"Resize every image to this side in pixels ({MIN_SIDE} to {MAX_SIDE}) "
            "[default: as they are; images of several sizes need it].",
            "resize_method": f"How: {', '.join(RESIZE_METHODS)} (bilinear and bicubic are "
            "antialiased when they shrink; area averages the pixels covered) [default: "
            "bilinear].",
        },
    )
)
