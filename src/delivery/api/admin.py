import uuid
from datetime import date
from typing import Annotated, Any

import amqp.exceptions
import anyio.to_thread
import kombu.exceptions
from celery.result import AsyncResult
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from delivery import audit, deadletters, service
from delivery.api.deps import DbSession, OperatorName, PackageId, ResourcesDep, require_admin
from delivery.api.packages import MAX_SIZE
from delivery.api.responses import ADMIN, CONFLICT, JOB_NOT_FOUND, PACKAGE_NOT_FOUND
from delivery.api.routing import DecimalRoute
from delivery.audit import Action
from delivery.broker import PRICE_TASK, PUBLISH_TIMEOUT, confirming_producer, publish_job_body
from delivery.errors import ServiceUnavailable, TransportCompanyConflict
from delivery.schemas import (
    MAX_RANGE_DAYS,
    AuditEntryRead,
    AuditPage,
    Backlog,
    CurrentOperator,
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
from delivery.store import REDIS_UNAVAILABLE

router = APIRouter(
    route_class=DecimalRoute, tags=["operators"], dependencies=[Depends(require_admin)], responses=ADMIN
)


@router.post(
    "/packages/{package_id}/transport-company/",
    response_model=PackageRead,
    responses=PACKAGE_NOT_FOUND | CONFLICT,
)
async def bind_transport_company(
    package_id: PackageId, body: TransportCompanyBind, db: DbSession, operator: OperatorName
) -> Any:
    """Bind the package to the transport company that will deliver it; the first company wins."""
    what = f"package {package_id}, company {body.company_id}"
    try:
        package = await service.bind_transport_company(db, package_id, body.company_id)
    except TransportCompanyConflict as exc:
        outcome = f"refused: company {exc.holder_id} holds it"
        await audit.record(db, operator=operator, action=Action.COMPANY_BIND, object=what, outcome=outcome)
        raise
    await audit.record(db, operator=operator, action=Action.COMPANY_BIND, object=what, outcome="ok")
    return package


_DAY = {"type": "string", "format": "date"}

#: The query as OpenAPI states it: `date`, or `from` with `to`, and nothing else (an object parameter, its
#: properties the query's names). Three optional parameters would document `?to=` alone, or none at all, as
#: a valid query; the server refuses them (422), so the document does too. What no schema can state, `from`
#: not after `to` and at most `MAX_RANGE_DAYS` days, is in its description.
DAY_OR_RANGE = {
    "name": "day_or_range",
    "in": "query",
    "required": True,
    "style": "form",
    "explode": True,
    "description": (
        "`date` (a UTC day, YYYY-MM-DD), or `from` and `to` (the range's first and last UTC days, "
        f"`from` not after `to`, at most {MAX_RANGE_DAYS} days in all)"
    ),
    "schema": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"date": _DAY},
                "required": ["date"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"from": _DAY, "to": _DAY},
                "required": ["from", "to"],
                "additionalProperties": False,
            },
        ]
    },
}


@router.get("/admin/stats/daily-costs/", openapi_extra={"parameters": [DAY_OR_RANGE]})
async def daily_costs(
    request: Request,
    db: DbSession,
    day: Annotated[IsoDate | None, Query(alias="date", include_in_schema=False)] = None,
    start: Annotated[IsoDate | None, Query(alias="from", include_in_schema=False)] = None,
    end: Annotated[IsoDate | None, Query(alias="to", include_in_schema=False)] = None,
) -> DailyCosts | DailyCostsRange:
    """The delivery costs calculated on a UTC day (`date`), or on every day from `from` to `to`, by type."""
    # The query's shapes admit no other name (`additionalProperties: false`): one is refused, not ignored.
    for name, value in request.query_params.multi_items():
        if name not in ("date", "from", "to"):
            raise _invalid(name, "unknown query parameter: give date, or from and to", value)
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


@router.get("/admin/me/")
async def current_operator(operator: OperatorName) -> CurrentOperator:
    """Who the key of the request belongs to: the operator's name (`admin` for ADMIN_TOKEN)."""
    return CurrentOperator(operator=operator)


@router.get("/admin/audit/", response_model=AuditPage)
async def audit_trail(
    db: DbSession,
    start: Annotated[
        IsoDate | None,
        Query(alias="from", description="only entries from this UTC day on (YYYY-MM-DD, included)"),
    ] = None,
    end: Annotated[
        IsoDate | None,
        Query(
            alias="to",
            description="only entries up to this UTC day (YYYY-MM-DD, included); before `from`: none",
        ),
    ] = None,
    operator: Annotated[
        str | None,
        Query(max_length=64, description="only this operator's entries (the exact name; empty: everyone's)"),
    ] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=MAX_SIZE)] = 20,
) -> Any:
    """The audit trail of operator actions, newest first, filtered and paginated."""
    entries, total = await audit.page(db, start=start, end=end, operator=operator, page=page, size=size)
    items = [AuditEntryRead.model_validate(entry) for entry in entries]
    return AuditPage.build(items, total=total, page=page, size=size)


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
async def requeue_dead_letters(
    resources: ResourcesDep, db: DbSession, operator: OperatorName
) -> DeadLettersRequeued:
    """Send every dead letter back to the registration queue (after the cause was fixed)."""

    celery = resources.celery
    published = 0

    def send(body: Any) -> None:
        with confirming_producer(celery) as producer:
            publish_job_body(celery, body, producer=producer)

    async def publish(body: Any) -> None:
        # Bounded as the pricing job's publish is: a broker that blocks publishers is a 503, the letters
        # not yet sent kept.
        try:
            with anyio.fail_after(2 * PUBLISH_TIMEOUT):
                await anyio.to_thread.run_sync(send, body, abandon_on_cancel=True)
        except (TimeoutError, OSError, kombu.exceptions.KombuError, amqp.exceptions.AMQPError) as exc:
            raise ServiceUnavailable("broker") from exc
        nonlocal published
        published += 1

    try:
        sent = await deadletters.requeue(
            resources.maker, resources.store, publish, status_ttl=resources.settings.STATUS_TTL
        )
    except Exception as exc:
        outcome = f"failed: sent back {published}, then {exc}"
        await audit.record(
            db, operator=operator, action=Action.DEAD_LETTERS_REQUEUE, object="dead letters", outcome=outcome
        )
        raise
    await audit.record(
        db,
        operator=operator,
        action=Action.DEAD_LETTERS_REQUEUE,
        object="dead letters",
        outcome=f"ok: sent back {sent}",
    )
    return DeadLettersRequeued(requeued=sent)


@router.post("/admin/jobs/price-packages/", status_code=202)
async def price_packages(resources: ResourcesDep, db: DbSession, operator: OperatorName) -> JobAccepted:
    """Run the periodic pricing job now."""
    celery = resources.celery

    def send() -> AsyncResult[Any]:
        with confirming_producer(celery) as producer:
            return celery.send_task(
                PRICE_TASK,
                producer=producer,
                retry=False,
                timeout=PUBLISH_TIMEOUT,
                confirm_timeout=PUBLISH_TIMEOUT,
            )

    try:
        # The publish's own deadlines bound it; this one bounds what they do not (a connection that opens
        # but never answers), the thread abandoned to them.
        with anyio.fail_after(2 * PUBLISH_TIMEOUT):
            result = await anyio.to_thread.run_sync(send, abandon_on_cancel=True)
    except (TimeoutError, OSError, kombu.exceptions.KombuError, amqp.exceptions.AMQPError) as exc:
        unavailable = ServiceUnavailable("broker")
        await audit.record(
            db, operator=operator, action=Action.PRICING_START, object=None, outcome=audit.failed(unavailable)
        )
        raise unavailable from exc
    await audit.record(
        db, operator=operator, action=Action.PRICING_START, object=f"task {result.id}", outcome="ok"
    )
    return JobAccepted(task_id=result.id)


# Celery's task ids are UUIDs: the path takes nothing else, so it never shadows another route of
# /admin/jobs/ (`price-packages` is not a task id), and any other id names no job.
@router.get("/admin/jobs/{task_id:uuid}/", responses=JOB_NOT_FOUND)
async def job_state(task_id: uuid.UUID, resources: ResourcesDep) -> JobState:
    """A job's state and result, from Celery's result backend."""
    backend = resources.celery.backend
    # Seconds an operator waits for the backend before a 503: a silent Redis otherwise holds the request
    # for its socket timeout (120 s).
    wait = 2.0

    def read() -> JobState:
        # One attempt: `AsyncResult.state` retries a failed read with backoff for minutes (the worker's
        # result_backend_always_retry, there so its result writes survive a Redis restart). Both backends
        # configured here (Redis, the embedded folder) are key-value backends, which have this single read.
        meta = backend._get_task_meta_for(str(task_id))  # type: ignore[attr-defined]
        state, value = meta["status"], meta["result"]
        return JobState(
            task_id=str(task_id),
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
        # Celery's own test names a connection lost; a Redis that answers that it cannot serve (a replica
        # without its master, a restart still loading) is away as much.
        if backend.exception_safe_to_retry(exc) or isinstance(exc, REDIS_UNAVAILABLE):
            raise ServiceUnavailable("result backend") from exc
        raise
