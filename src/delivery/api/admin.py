from typing import Annotated, Any

import anyio.to_thread
from celery.result import AsyncResult
from fastapi import APIRouter, Depends, Query

from delivery import service
from delivery.api.deps import DbSession, PackageId, ResourcesDep, require_admin
from delivery.api.responses import ADMIN, CONFLICT, PACKAGE_NOT_FOUND
from delivery.api.routing import DecimalRoute
from delivery.schemas import (
    DailyCosts,
    DailyTypeTotal,
    IsoDate,
    JobAccepted,
    JobState,
    PackageRead,
    PackageTypeRead,
    TransportCompanyBind,
)
from delivery.worker import PRICE_TASK

router = APIRouter(
    route_class=DecimalRoute, tags=["operators"], dependencies=[Depends(require_admin)], responses=ADMIN
)


@router.post(
    "/packages/{package_id}/transport-company/",
    response_model=PackageRead,
    responses=PACKAGE_NOT_FOUND | CONFLICT,
)
async def bind_transport_company(package_id: PackageId, body: TransportCompanyBind, db: DbSession) -> Any:
    """Bind the package to the transport company that will deliver it; the first company wins."""
    return await service.bind_transport_company(db, package_id, body.company_id)


@router.get("/admin/stats/daily-costs/")
async def daily_costs(
    db: DbSession, day: Annotated[IsoDate, Query(alias="date", description="a UTC day, YYYY-MM-DD")]
) -> DailyCosts:
    """The delivery costs calculated on a UTC day, summed by type."""
    rows = await service.daily_costs(db, day)
    return DailyCosts(
        date=day,
        totals=[
            DailyTypeTotal(type=PackageTypeRead.model_validate(ptype), packages=count, total_cost_rub=total)
            for ptype, count, total in rows
        ],
    )


@router.post("/admin/jobs/price-packages/", status_code=202)
async def price_packages(resources: ResourcesDep) -> JobAccepted:
    """Run the periodic pricing job now."""
    result: AsyncResult[Any] = await anyio.to_thread.run_sync(resources.celery.send_task, PRICE_TASK)
    return JobAccepted(task_id=result.id)


@router.get("/admin/jobs/{task_id}/")
async def job_state(task_id: str, resources: ResourcesDep) -> JobState:
    """A job's state and result, from Celery's result backend."""

    def read() -> JobState:
        result: AsyncResult[Any] = AsyncResult(task_id, app=resources.celery)
        state = result.state
        value = result.result
        return JobState(
            task_id=task_id,
            state=state,
            result=value if state == "SUCCESS" and isinstance(value, dict) else None,
            error=repr(value) if state == "FAILURE" else None,
        )

    return await anyio.to_thread.run_sync(read)
