"""``/v1/datasets``: upload, list, get, delete."""

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
from app.schemas.common import Page
from app.schemas.datasets import DatasetOut
from app.services import datasets as service

Sha256Query = Annotated[str | None, sha256_query("datasets")]
REUSED_RESPONSE = reused_response(DatasetOut, "dataset", "under the same file name")

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    summary="Upload a dataset",
    description="Streams the file to storage (any format cartl_core reads: `.npz` with "
    "x_train/y_train/x_test/y_test, ImageFolder `.zip`/`.tar.gz`, the CIFAR-10/100 python "
    "tarballs, SVHN's two `.mat` files in an archive), then loads it in a separate process. "
    "Archives are checked for path traversal, links and decompression bombs before anything "
    "is extracted; labels must fit the classes. A bad file gives 422 naming the problem, and "
    "nothing is kept. The same bytes uploaded again by the same owner (same sha256) under the "
    "same name are not kept twice: the answer is the dataset recorded then, with 200 and "
    "`Upload-Reused: true`.",
    responses={200: REUSED_RESPONSE, **problem_responses(400, 408, 413, 415, 422, 429, 503, 507)},
    openapi_extra=multipart_body({}),
)
async def upload_dataset(
    request: Request,
    response: Response,
    owner: UploadOwnerDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> DatasetOut:
    row, created = await service.create_dataset(
        factory, settings, storage, owner, receiver(request, storage, settings)
    )
    if not created:
        response.status_code = 200
        response.headers["Upload-Reused"] = "true"
    return DatasetOut.model_validate(row)


@router.get("", summary="List datasets, newest first")
def list_datasets(
    owner: OwnerDep,
    session: SessionDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    sha256: Sha256Query = None,
) -> Page[DatasetOut]:
    page = service.list_datasets(session, owner, limit=limit, cursor=cursor, sha256=sha256)
    return Page[DatasetOut](
        items=[DatasetOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor
    )


@router.get("/{dataset_id}", summary="Get a dataset", responses=problem_responses(404))
def get_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep) -> DatasetOut:
    return DatasetOut.model_validate(service.get_dataset(session, owner, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a dataset and its file",
    responses=problem_responses(
        404,
        409,
        503,
        s409="A queued or running job uses it.",
        s503="The files could not be removed.",
    ),
)
def delete_dataset(
    dataset_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    service.delete_dataset(session, storage, owner, dataset_id)
    return Response(status_code=204)
