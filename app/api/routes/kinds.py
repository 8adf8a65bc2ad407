"""``/v1/job-kinds``: the registered job kinds (:mod:`cartl_core.kinds`), for clients that build
a job form from them, as the dashboard does."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import OwnerDep
from app.schemas.jobs import JobKindOut
from app.services.params import params_json_schema
from cartl_core.kinds import job_kinds

router = APIRouter(prefix="/v1/job-kinds", tags=["jobs"])


@router.get("", summary="List the job kinds and their parameters")
def list_job_kinds(owner: OwnerDep) -> list[JobKindOut]:
    del owner  # any key may read the registry; the check keeps /v1 behind one rule
    return [
        JobKindOut(
            name=kind.name,
            summary=kind.summary,
            checkpoint=kind.checkpoint,
            makes_weights=kind.makes_weights,
            candidates=kind.candidates,
            params_schema=params_json_schema(kind.name),
        )
        for kind in job_kinds()
    ]
