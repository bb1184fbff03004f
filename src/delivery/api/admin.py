from datetime import date
from typing import Annotated, Any

import anyio.to_thread
from celery.result import AsyncResult
from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError

from delivery import deadletters, service
from delivery.api.deps import DbSession, PackageId, ResourcesDep, require_admin
from delivery.api.responses import ADMIN, CONFLICT, PACKAGE_NOT_FOUND
from delivery.api.routing import DecimalRoute
from delivery.broker import PRICE_TASK, publish_job_body
from delivery.errors import ServiceUnavailable
from delivery.schemas import (
    MAX_RANGE_DAYS,
    Backlog,
    DailyCosts,
    DailyCostsRange,
    DailyTypeTotal,
    DeadLetterRead,
    DeadLetters,
    DeadLettersRequeued,
    IsoDate,
    JobAccepted,
    JobState,
    PackageRead,
    PackageTypeRead,
    TransportCompanyBind,
)

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
    db: DbSession,
    day: Annotated[IsoDate | None, Query(alias="date", description="a UTC day, YYYY-MM-DD")] = None,
    start: Annotated[IsoDate | None, Query(alias="from", description="the range's first UTC day")] = None,
    end: Annotated[
        IsoDate | None,
        Query(alias="to", description=f"the range's last UTC day, at most {MAX_RANGE_DAYS} days in all"),
    ] = None,
) -> DailyCosts | DailyCostsRange:
    """The delivery costs calculated on a UTC day (`date`), or on every day from `from` to `to`, by type."""
    if day is not None and start is None and end is None:
        return DailyCosts(date=day, totals=_totals(await service.daily_costs(db, day)))
    start, end = _range(day, start, end)
    days = await service.daily_costs_range(db, start, end)
    return DailyCostsRange(
        start=start, end=end, days=[DailyCosts(date=d, totals=_totals(rows)) for d, rows in days]
    )


def _totals(rows: service.DailyTotals) -> list[DailyTypeTotal]:
    return [
        DailyTypeTotal(type=PackageTypeRead.model_validate(ptype), packages=count, total_cost_rub=total)
        for ptype, count, total in rows
    ]


def _range(day: date | None, start: date | None, end: date | None) -> tuple[date, date]:
    """`from` and `to`, or the 422 naming the parameter that is missing, extra or out of range."""
    if day is not None:
        raise _invalid("date", "give either date, or from and to, not both", str(day))
    if start is None and end is None:
        raise _invalid("date", "Field required", None, kind="missing")
    if start is None:
        raise _invalid("from", "Field required", None, kind="missing")
    if end is None:
        raise _invalid("to", "Field required", None, kind="missing")
    if end < start:
        raise _invalid("to", "must not be before from", str(end))
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise _invalid("to", f"a range spans at most {MAX_RANGE_DAYS} days, both ends included", str(end))
    return start, end


def _invalid(
    field: str, message: str, value: str | None, *, kind: str = "value_error"
) -> RequestValidationError:
    # The shape of FastAPI's own 422, so a client reads every refusal of a parameter the same way.
    return RequestValidationError([{"type": kind, "loc": ("query", field), "msg": message, "input": value}])


@router.get("/admin/stats/backlog/")
async def backlog(db: DbSession, resources: ResourcesDep) -> Backlog:
    """Packages without a cost, registrations still pending, and when a cost was last calculated."""
    return await service.backlog(db, resources.store)


@router.get("/admin/dead-letters/")
async def dead_letters(db: DbSession) -> DeadLetters:
    """The registration jobs that could not succeed: how many, since when, and the oldest of them."""
    summary = await deadletters.summary(db)
    items = [DeadLetterRead.model_validate(letter) for letter in await deadletters.oldest(db)]
    return DeadLetters(count=summary.count, oldest_at=summary.oldest_at, items=items)


@router.post("/admin/dead-letters/requeue/", status_code=202)
async def requeue_dead_letters(resources: ResourcesDep) -> DeadLettersRequeued:
    """Send every dead letter back to the registration queue (after the cause was fixed)."""

    async def publish(body: Any) -> None:
        await anyio.to_thread.run_sync(publish_job_body, resources.celery, body)

    sent = await deadletters.requeue(
        resources.maker, resources.store, publish, status_ttl=resources.settings.STATUS_TTL
    )
    return DeadLettersRequeued(requeued=sent)


@router.post("/admin/jobs/price-packages/", status_code=202)
async def price_packages(resources: ResourcesDep) -> JobAccepted:
    """Run the periodic pricing job now."""
    result: AsyncResult[Any] = await anyio.to_thread.run_sync(resources.celery.send_task, PRICE_TASK)
    return JobAccepted(task_id=result.id)


@router.get("/admin/jobs/{task_id}/")
async def job_state(task_id: str, resources: ResourcesDep) -> JobState:
    """A job's state and result, from Celery's result backend."""
    backend = resources.celery.backend
    # Seconds an operator waits for the backend before a 503: a silent Redis otherwise holds the request
    # for its socket timeout (120 s).
    wait = 2.0

    def read() -> JobState:
        # One attempt: `AsyncResult.state` retries a failed read with backoff for minutes (the worker's
        # result_backend_always_retry, there so its result writes survive a Redis restart). Both backends
        # configured here (Redis, the embedded folder) are key-value backends, which have this single read.
        meta = backend._get_task_meta_for(task_id)  # type: ignore[attr-defined]
        state, value = meta["status"], meta["result"]
        return JobState(
            task_id=task_id,
            state=state,
            result=value if state == "SUCCESS" and isinstance(value, dict) else None,
            error=repr(value) if state == "FAILURE" else None,
        )

    try:
        with anyio.fail_after(wait):
            # Abandoned on timeout: the thread ends at the backend's own socket timeout.
            return await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
    except TimeoutError:
        raise ServiceUnavailable("result backend") from None
    except Exception as exc:
        if backend.exception_safe_to_retry(exc):
            raise ServiceUnavailable("result backend") from exc
        raise
