from fastapi import APIRouter, Depends, Response

from delivery import service
from delivery.api.deps import AddressLimit, DbSession, ResourcesDep
from delivery.api.responses import LIMITED_SESSIONS, UNAVAILABLE
from delivery.api.routing import DecimalRoute

router = APIRouter(tags=["sessions"], route_class=DecimalRoute)

COOKIE_NAME = "session_id"


@router.get(
    "/sessions/new/",
    status_code=204,
    response_class=Response,
    responses=LIMITED_SESSIONS | UNAVAILABLE,
    dependencies=[Depends(AddressLimit("sessions"))],
)
async def open_session(db: DbSession, resources: ResourcesDep) -> Response:
    """Open a session: sets the `session_id` cookie that every customer endpoint needs."""
    settings = resources.settings
    token = await service.create_session(db, ttl=settings.SESSION_TTL)
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=settings.SESSION_TTL,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.COOKIE_SECURE,
    )
    return response
