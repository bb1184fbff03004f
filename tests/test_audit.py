"""The audit trail: each operator action writes its entry (who, what, on which object, the outcome, the
request id, when), and GET /admin/audit/ reads it back, filtered, paginated and newest first; nothing
changes or deletes an entry."""

import getpass
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from delivery.db import utcnow
from delivery.models import AuditEntry, DeadLetter
from delivery.registration import RegistrationJob
from tests.factories import Maker, add_operator, add_package, add_session, audit_entries
from tests.fakebank import FakeBank
from tests.stack import ADMIN_TOKEN, Stack, delivery

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
SHELL = f"shell:{getpass.getuser()}"


def fields(entry: AuditEntry) -> tuple[str, str, str | None, str, str | None]:
    return entry.operator, entry.action, entry.object, entry.outcome, entry.request_id


def assert_recent(entry: AuditEntry, since: datetime) -> None:
    assert since - timedelta(seconds=1) <= entry.at <= utcnow() + timedelta(seconds=1), entry.at
    assert entry.at.tzinfo is not None and entry.at.utcoffset() == timedelta(0)


async def add_dead_letter(maker: Maker) -> str:
    """A registration job kept as a dead letter, as the worker keeps one; its registration id."""
    session_id = (await add_session(maker))[0]
    registration_id = str(uuid.uuid4())
    job = RegistrationJob(registration_id, session_id, "Parcel", "1.5", 1, "40", time.time())
    async with maker() as db, db.begin():
        db.add(
            DeadLetter(
                registration_id=registration_id,
                session_id=session_id,
                body=json.dumps(job.to_json()),
                reason="type 1 no longer exists",
                deliveries=5,
                dead_at=utcnow(),
            )
        )
    return registration_id


# --- each action writes its entry ---


class TestActionsRecorded:
    async def test_a_company_bound_then_refused(self, client: httpx.AsyncClient, maker: Maker) -> None:
        """Each entry names the operator whose key was sent and the request's id (the client's, or the one
        the answer carries)."""
        alice = await add_operator(maker, "alice")
        package_id = await add_package(maker, session_id=(await add_session(maker))[0])
        url = f"/packages/{package_id}/transport-company/"
        started = utcnow()
        bound = await client.post(url, json={"company_id": 7}, headers=ADMIN | {"X-Request-ID": "bind-1"})
        assert bound.status_code == 200, bound.text
        refused = await client.post(url, json={"company_id": 8}, headers={"X-Admin-Token": alice})
        assert refused.status_code == 409, refused.text
        entries = await audit_entries(maker)
        assert [fields(e) for e in entries] == [
            ("admin", "company.bind", f"package {package_id}, company 7", "ok", "bind-1"),
            (
                "alice",
                "company.bind",
                f"package {package_id}, company 8",
                "refused: company 7 holds it",
                refused.headers["X-Request-ID"],
            ),
        ]
        for entry in entries:
            assert_recent(entry, started)

    async def test_nothing_is_recorded_for_what_was_not_done(
        self, client: httpx.AsyncClient, maker: Maker
    ) -> None:
        """Reads, refused keys, an unknown package, invalid input: no action, no entry."""
        await client.post("/packages/999999/transport-company/", json={"company_id": 7}, headers=ADMIN)
        await client.post("/packages/1/transport-company/", json={"company_id": 0}, headers=ADMIN)
        await client.post(
            "/packages/1/transport-company/", json={"company_id": 7}, headers={"X-Admin-Token": "x"}
        )
        await client.post("/admin/jobs/price-packages/", headers={"X-Admin-Token": "x"})
        for path in ("/admin/me/", "/admin/stats/backlog/", "/admin/dead-letters/", "/admin/audit/"):
            assert (await client.get(path, headers=ADMIN)).status_code == 200
        assert await audit_entries(maker) == []

    async def test_a_pricing_run_started(self, stack: Stack, client: httpx.AsyncClient, maker: Maker) -> None:
        stack.stop_shared_worker()  # the job stays queued, purged before the next test: none runs late
        started = utcnow()
        response = await client.post("/admin/jobs/price-packages/", headers=ADMIN)
        assert response.status_code == 202, response.text
        (entry,) = await audit_entries(maker)
        task_id = response.json()["task_id"]
        assert fields(entry) == (
            "admin",
            "pricing.start",
            f"task {task_id}",
            "ok",
            response.headers["X-Request-ID"],
        )
        assert_recent(entry, started)

    async def test_dead_letters_sent_back(
        self, stack: Stack, client: httpx.AsyncClient, maker: Maker
    ) -> None:
        stack.stop_shared_worker()  # the jobs stay queued, purged before the next test: none runs late
        await add_dead_letter(maker)
        await add_dead_letter(maker)
        bob = await add_operator(maker, "bob")
        response = await client.post("/admin/dead-letters/requeue/", headers={"X-Admin-Token": bob})
        assert response.status_code == 202, response.text
        assert response.json() == {"requeued": 2}
        again = await client.post("/admin/dead-letters/requeue/", headers=ADMIN)
        assert again.json() == {"requeued": 0}
        assert [fields(e) for e in await audit_entries(maker)] == [
            (
                "bob",
                "dead_letters.requeue",
                "dead letters",
                "ok: sent back 2",
                response.headers["X-Request-ID"],
            ),
            (
                "admin",
                "dead_letters.requeue",
                "dead letters",
                "ok: sent back 0",
                again.headers["X-Request-ID"],
            ),
        ]

    async def test_dead_letters_sent_back_by_the_command(self, stack: Stack, maker: Maker) -> None:
        stack.stop_shared_worker()  # the job stays queued, purged before the next test: none runs late
        await add_dead_letter(maker)
        started = utcnow()
        done = delivery(stack, "dead-letters", "requeue")
        assert done.returncode == 0, done.stderr
        (entry,) = await audit_entries(maker)
        assert fields(entry) == (SHELL, "dead_letters.requeue", "dead letters", "ok: sent back 1", None)
        assert_recent(entry, started)

    async def test_operators_added_and_revoked_by_the_command(self, stack: Stack, maker: Maker) -> None:
        started = utcnow()
        assert delivery(stack, "operators", "add", "carol").returncode == 0
        assert delivery(stack, "operators", "revoke", "carol").returncode == 0
        # What did nothing leaves nothing: a name taken, an unknown one, a second revocation.
        assert delivery(stack, "operators", "add", "carol").returncode == 1
        assert delivery(stack, "operators", "revoke", "dave").returncode == 1
        assert delivery(stack, "operators", "revoke", "carol").returncode == 0
        entries = await audit_entries(maker)
        assert [fields(e) for e in entries] == [
            (SHELL, "operator.add", "operator carol", "ok", None),
            (SHELL, "operator.revoke", "operator carol", "ok", None),
        ]
        for entry in entries:
            assert_recent(entry, started)

    async def test_a_pricing_run_by_the_command(self, stack: Stack, maker: Maker, bank: FakeBank) -> None:
        session_id = (await add_session(maker))[0]
        await add_package(maker, session_id=session_id)
        bank.mode = "error"
        assert delivery(stack, "price").returncode == 1
        bank.mode = "ok"
        assert delivery(stack, "price").returncode == 0
        failed, ok = await audit_entries(maker)
        assert fields(ok) == (SHELL, "pricing.run", None, "ok: priced 1", None)
        assert (failed.operator, failed.action, failed.request_id) == (SHELL, "pricing.run", None)
        assert failed.outcome.startswith("failed: "), failed.outcome


# --- reading it back ---


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2025, 6, day, hour, minute, second, micro, tzinfo=UTC)


#: (when, who), in the order they are written: not the order of their times.
TRAIL = [
    (at(10, 0, 0), "alice"),
    (at(10, 23, 59, 59, 999_999), "bob"),
    (at(11, 0, 0), "alice"),
    (at(10, 12), "admin"),
    (at(12, 8), "alice"),
    (at(13, 23, 30), "bob"),
]

#: Every entry's time, newest first.
ALL = [(13, 23, 30), (12, 8), (11, 0), (10, 23, 59, 59, 999_999), (10, 12), (10, 0)]


@pytest.fixture
async def trail(maker: Maker) -> list[AuditEntry]:
    """Six entries over four days (2025-06-10 to 13), written out of time order; newest first."""
    async with maker() as db, db.begin():
        entries = [
            AuditEntry(
                at=when,
                operator=who,
                action="company.bind",
                object=f"package {index}, company 7",
                outcome="ok",
                request_id=f"req-{index}",
            )
            for index, (when, who) in enumerate(TRAIL)
        ]
        db.add_all(entries)
    return sorted(entries, key=lambda e: e.at, reverse=True)


async def read(client: httpx.AsyncClient, **params: str | int) -> dict[str, object]:
    response = await client.get("/admin/audit/", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def request_ids(body: dict[str, object]) -> list[str]:
    items = body["items"]
    assert isinstance(items, list)
    return [item["request_id"] for item in items]


def ids(entries: list[AuditEntry]) -> list[str | None]:
    return [e.request_id for e in entries]


class TestListing:
    async def test_newest_first_in_the_package_lists_page_shape(
        self, client: httpx.AsyncClient, trail: list[AuditEntry]
    ) -> None:
        body = await read(client)
        assert set(body) == {"items", "total", "page", "size", "pages"}
        assert (body["total"], body["page"], body["size"], body["pages"]) == (6, 1, 20, 1)
        assert request_ids(body) == ids(trail)
        items = body["items"]
        assert isinstance(items, list)
        newest = trail[0]
        assert items[0] == {
            "at": items[0]["at"],
            "operator": "bob",
            "action": "company.bind",
            "object": newest.object,
            "outcome": "ok",
            "request_id": newest.request_id,
        }
        assert datetime.fromisoformat(items[0]["at"].replace("Z", "+00:00")) == at(13, 23, 30)
        assert items[0]["at"].endswith(("Z", "+00:00"))

    async def test_pages(self, client: httpx.AsyncClient, trail: list[AuditEntry]) -> None:
        seen = []
        for page in (1, 2, 3):
            body = await read(client, page=page, size=2)
            assert (body["total"], body["page"], body["size"], body["pages"]) == (6, page, 2, 3)
            seen += request_ids(body)
        assert seen == ids(trail)
        past = await read(client, page=4, size=2)
        assert past["items"] == [] and past["total"] == 6 and past["pages"] == 3
        far = await read(client, page=10**20, size=100)
        assert far["items"] == [] and far["total"] == 6
        last = await read(client, page=2, size=5)
        assert request_ids(last) == ids(trail)[5:]

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"from": "2025-06-11"}, [(13, 23, 30), (12, 8), (11, 0)]),
            ({"to": "2025-06-10"}, [(10, 23, 59, 59, 999_999), (10, 12), (10, 0)]),
            ({"from": "2025-06-10", "to": "2025-06-10"}, [(10, 23, 59, 59, 999_999), (10, 12), (10, 0)]),
            ({"from": "2025-06-11", "to": "2025-06-12"}, [(12, 8), (11, 0)]),
            ({"from": "2025-06-14"}, []),
            ({"from": "2025-06-12", "to": "2025-06-11"}, []),
            ({"operator": "alice"}, [(12, 8), (11, 0), (10, 0)]),
            ({"operator": "alice", "from": "2025-06-11", "to": "2025-06-11"}, [(11, 0)]),
            ({"operator": "bob", "to": "2025-06-12"}, [(10, 23, 59, 59, 999_999)]),
            ({"operator": "carol"}, []),
            ({"operator": ""}, ALL),
            ({"from": "0001-01-01", "to": "9999-12-31"}, ALL),
        ],
        ids=[
            "from",
            "to-includes-its-last-microsecond",
            "one-day",
            "range",
            "after-the-last",
            "from-after-to",
            "operator",
            "operator-and-day",
            "operator-and-to",
            "operator-unknown",
            "operator-empty-is-everyone",
            "widest-dates",
        ],
    )  # fmt: skip
    async def test_filters(
        self,
        client: httpx.AsyncClient,
        trail: list[AuditEntry],
        params: dict[str, str],
        expected: list[tuple[int, ...]],
    ) -> None:
        body = await read(client, **params, size=100)
        assert body["total"] == len(expected)
        wanted = [at(*when) for when in expected]
        assert request_ids(body) == [e.request_id for e in trail if e.at in wanted]
        assert [e.at for e in trail if e.at in wanted] == wanted

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"page": 0}, "page"),
            ({"page": "x"}, "page"),
            ({"size": 0}, "size"),
            ({"size": 101}, "size"),
            ({"from": "2025-13-01"}, "from"),
            ({"from": "2025-06-10T00:00:00"}, "from"),
            ({"to": "10.06.2025"}, "to"),
            ({"operator": "a" * 65}, "operator"),
        ],
        ids=[
            "page-0", "page-text", "size-0", "size-101", "from-no-date", "from-a-time", "to-russian",
            "operator-long",
        ],
    )  # fmt: skip
    async def test_bad_values_are_422_naming_them(
        self, client: httpx.AsyncClient, params: dict[str, str], field: str
    ) -> None:
        response = await client.get("/admin/audit/", params=params, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert any(field in error["loc"] for error in response.json()["detail"]), response.text

    async def test_operators_only(self, client: httpx.AsyncClient, trail: list[AuditEntry]) -> None:
        assert (await client.get("/admin/audit/")).status_code == 401
        assert (await client.get("/admin/audit/", headers={"X-Admin-Token": "x"})).status_code == 403
        assert (await client.get("/admin/audit", headers=ADMIN, follow_redirects=True)).status_code == 200


# --- never changed ---


class TestAppendOnly:
    @pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
    async def test_no_route_changes_an_entry(
        self, client: httpx.AsyncClient, maker: Maker, trail: list[AuditEntry], method: str
    ) -> None:
        for path in ("/admin/audit/", "/admin/audit/1/", "/admin/audit/1"):
            response = await client.request(method, path, headers=ADMIN, json={"outcome": "ok"})
            assert response.status_code in (404, 405), (path, response.status_code)
        assert (await client.request(method, "/admin/audit/", headers=ADMIN)).status_code == 405
        assert [fields(e) for e in await audit_entries(maker)] == [fields(e) for e in sorted(trail, key=_id)]

    async def test_the_document_offers_reading_only(self, client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        audit_paths = {path: set(operations) for path, operations in paths.items() if "audit" in path}
        assert audit_paths == {"/admin/audit/": {"get"}}

    async def test_the_model_refuses_an_update_or_a_delete(
        self, maker: Maker, trail: list[AuditEntry]
    ) -> None:
        async with maker() as db:
            entry = await db.scalar(select(AuditEntry).where(AuditEntry.request_id == "req-0"))
            assert entry is not None
            entry.outcome = "changed"
            with pytest.raises(TypeError, match="never changed"):
                await db.commit()
            await db.rollback()
            await db.delete(entry)
            with pytest.raises(TypeError, match="never changed"):
                await db.commit()
        assert [fields(e) for e in await audit_entries(maker)] == [fields(e) for e in sorted(trail, key=_id)]


def _id(entry: AuditEntry) -> int:
    return entry.id
