"""Named operators: `delivery operators add | list | revoke`, their keys at the operator endpoints, and
ADMIN_TOKEN as the operator `admin`."""

import hashlib
import re
from datetime import datetime

import httpx
import pytest
from sqlalchemy import select

from delivery import operators
from delivery.config import Settings
from delivery.models import AuditEntry, Operator
from tests.factories import Maker, add_operator, app_client
from tests.stack import ADMIN_TOKEN, Stack, delivery

#: `secrets.token_urlsafe(32)`: 256 random bits in 43 URL-safe characters.
KEY = re.compile(r"[A-Za-z0-9_-]{43}")


async def me(client: httpx.AsyncClient, key: str | None) -> httpx.Response:
    return await client.get("/admin/me/", headers={} if key is None else {"X-Admin-Token": key})


class TestCommands:
    async def test_add_prints_a_key_that_signs_the_operator_in(
        self, stack: Stack, client: httpx.AsyncClient
    ) -> None:
        added = delivery(stack, "operators", "add", "alice")
        assert added.returncode == 0, added.stderr
        key = added.stdout.strip()
        assert KEY.fullmatch(key), added.stdout
        assert "alice" in added.stderr and "once" in added.stderr
        response = await me(client, key)
        assert response.status_code == 200, response.text
        assert response.json() == {"operator": "alice"}

    async def test_only_the_keys_hash_is_stored(self, stack: Stack, maker: Maker) -> None:
        added = delivery(stack, "operators", "add", "alice")
        key = added.stdout.strip()
        async with maker() as db:
            (operator,) = (await db.scalars(select(Operator))).all()
            audit = (await db.scalars(select(AuditEntry))).all()
        assert operator.key_hash == hashlib.sha256(key.encode()).hexdigest()
        stored = [operator.name, operator.key_hash] + [
            str(value) for entry in audit for value in (entry.object, entry.outcome, entry.operator)
        ]
        assert not any(key in value for value in stored), stored

    async def test_each_add_makes_another_key(self, stack: Stack, client: httpx.AsyncClient) -> None:
        first = delivery(stack, "operators", "add", "alice").stdout.strip()
        second = delivery(stack, "operators", "add", "bob").stdout.strip()
        assert first != second
        assert (await me(client, first)).json() == {"operator": "alice"}
        assert (await me(client, second)).json() == {"operator": "bob"}

    async def test_a_name_is_added_once_and_admin_is_reserved(
        self, stack: Stack, maker: Maker, client: httpx.AsyncClient
    ) -> None:
        key = await add_operator(maker, "alice")
        again = delivery(stack, "operators", "add", "alice")
        assert again.returncode == 1
        assert "exists already" in again.stderr
        assert again.stdout == ""
        for name in ("admin", "Alice", "al ice", "", "a" * 65, "shell:root"):
            refused = delivery(stack, "operators", "add", name)
            assert refused.returncode == 1, (name, refused.stdout)
            assert refused.stdout == ""
        async with maker() as db:
            assert (await db.scalars(select(Operator.name))).all() == ["alice"]
        assert (await me(client, key)).json() == {"operator": "alice"}  # the first key still works

    async def test_list_names_each_operator_when_added_and_revoked(self, stack: Stack, maker: Maker) -> None:
        await add_operator(maker, "alice")
        await add_operator(maker, "bob.smith")
        assert delivery(stack, "operators", "revoke", "alice").returncode == 0
        listed = delivery(stack, "operators", "list")
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        assert header.split() == ["NAME", "CREATED", "REVOKED"]
        rows = {line.split()[0]: line.split()[1:] for line in lines}
        async with maker() as db:
            kept = {o.name: o for o in (await db.scalars(select(Operator))).all()}
        assert set(rows) == {"alice", "bob.smith"}
        for name, (created, _) in rows.items():
            assert datetime.fromisoformat(created) == kept[name].created_at.replace(microsecond=0)
        alice_revoked_at = kept["alice"].revoked_at
        assert alice_revoked_at is not None
        assert datetime.fromisoformat(rows["alice"][1]) == alice_revoked_at.replace(microsecond=0)
        assert rows["bob.smith"][1] == "-"

    async def test_list_with_no_operator_is_its_header(self, stack: Stack) -> None:
        listed = delivery(stack, "operators", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ["NAME", "CREATED", "REVOKED"]

    async def test_a_revoked_key_is_403_at_once(
        self, stack: Stack, maker: Maker, client: httpx.AsyncClient
    ) -> None:
        alice, bob = await add_operator(maker, "alice"), await add_operator(maker, "bob")
        assert (await me(client, alice)).status_code == 200
        revoked = delivery(stack, "operators", "revoke", "alice")
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == "operator alice revoked"
        for path in ("/admin/me/", "/admin/stats/backlog/"):
            response = await client.get(path, headers={"X-Admin-Token": alice})
            assert response.status_code == 403, response.text
        assert (await me(client, bob)).json() == {"operator": "bob"}
        assert (await me(client, ADMIN_TOKEN)).json() == {"operator": "admin"}
        again = delivery(stack, "operators", "revoke", "alice")
        assert again.returncode == 0
        assert "revoked already" in again.stdout
        assert (await me(client, alice)).status_code == 403

    async def test_revoking_an_unknown_name_fails(self, stack: Stack) -> None:
        revoked = delivery(stack, "operators", "revoke", "nobody")
        assert revoked.returncode == 1
        assert "no operator 'nobody'" in revoked.stderr


class TestGuard:
    async def test_admin_token_is_the_operator_admin(self, client: httpx.AsyncClient, maker: Maker) -> None:
        await add_operator(maker, "alice")
        response = await me(client, ADMIN_TOKEN)
        assert response.status_code == 200, response.text
        assert response.json() == {"operator": "admin"}

    @pytest.mark.parametrize("key", ["wrong", "", "alice"])
    async def test_a_wrong_or_empty_key_is_403_and_no_header_401(
        self, client: httpx.AsyncClient, maker: Maker, key: str
    ) -> None:
        right = await add_operator(maker, "alice")
        response = await me(client, key)
        assert response.status_code == 403, response.text
        assert response.json() == {"detail": "wrong X-Admin-Token"}
        assert (await me(client, right[:-1])).status_code == 403
        assert (await me(client, right + "x")).status_code == 403
        response = await me(client, None)
        assert response.status_code == 401, response.text

    async def test_named_operators_without_admin_token(self, settings: Settings, maker: Maker) -> None:
        """ADMIN_TOKEN unset: the operators' keys work; once the last is revoked, none is configured."""
        unset = settings.model_copy(update={"ADMIN_TOKEN": None})
        async with app_client(unset) as client:
            assert "not configured" in (await me(client, None)).json()["detail"]
            key = await add_operator(maker, "alice")
            assert (await me(client, key)).json() == {"operator": "alice"}
            assert (await me(client, None)).status_code == 401
            wrong = await me(client, ADMIN_TOKEN)
            assert wrong.status_code == 403
            assert wrong.json() == {"detail": "wrong X-Admin-Token"}
            async with maker() as db:
                await operators.revoke(db, "alice")
            for sent in (None, key, ADMIN_TOKEN):
                response = await me(client, sent)
                assert response.status_code == 403, response.text
                assert "not configured" in response.json()["detail"]

    async def test_wrong_keys_are_limited_per_address_for_named_operators_too(
        self, settings: Settings, maker: Maker
    ) -> None:
        key = await add_operator(maker, "alice")
        async with app_client(settings.model_copy(update={"RATE_LIMIT_OPERATOR_KEYS": "2/day"})) as client:
            assert (await me(client, key)).status_code == 200
            for _ in range(2):
                assert (await me(client, "guess")).status_code == 403
            assert (await me(client, "guess")).status_code == 429
            refused = await me(client, key)
            assert refused.status_code == 429, refused.text
            assert "operator-keys" in refused.json()["detail"]
