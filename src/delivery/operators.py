"""Named operators and their keys.

`delivery operators add NAME` makes a key of 256 random bits and prints it once; the table keeps only its
SHA-256. A plain, fast hash is enough here, unlike for a password: a key of 256 random bits cannot be guessed
from its hash by trying candidates, so a slow hash would add nothing but cost to every operator request. Being
deterministic, the hash is also what a key is looked up by: one indexed read per request.

`ADMIN_TOKEN`, when set, is the key of the operator `admin` (a one-operator setup); that name is reserved.
"""

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from delivery.db import utcnow
from delivery.errors import DeliveryError
from delivery.models import Operator

#: The operator `ADMIN_TOKEN` acts as.
ADMIN = "admin"
#: What a name may be: short, plain and lower case (one spelling, whatever a column's collation compares).
NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_', '@', '-', starting with a letter or a digit"


class InvalidName(DeliveryError):
    pass


class OperatorExists(DeliveryError):
    pass


class UnknownOperator(DeliveryError):
    pass


def valid_name(name: str) -> str:
    """`name`, if an operator may be called so; else InvalidName saying why."""
    if not NAME.fullmatch(name):
        raise InvalidName(f"invalid operator name {name!r}: {NAME_RULE}")
    if name == ADMIN:
        raise InvalidName(f"{ADMIN!r} is reserved: it is the operator ADMIN_TOKEN acts as")
    return name


def new_key() -> str:
    """A key of 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def add(db: AsyncSession, name: str) -> tuple[Operator, str]:
    """A new operator and their key, which is nowhere else: the caller shows it once."""
    key = new_key()
    operator = Operator(name=valid_name(name), key_hash=hash_key(key), created_at=utcnow())
    db.add(operator)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise OperatorExists(f"operator {name!r} exists already (names are never reused)") from None
    return operator, key


async def listed(db: AsyncSession) -> Sequence[Operator]:
    """Every operator, revoked ones included, in the order they were added."""
    return (await db.scalars(select(Operator).order_by(Operator.id))).all()


async def revoke(db: AsyncSession, name: str) -> tuple[Operator, bool]:
    """Revoke the operator's key from now on; the operator, and whether it was taken until now."""
    result = await db.execute(
        update(Operator)
        .where(Operator.name == name, Operator.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await db.commit()
    operator = await db.scalar(select(Operator).where(Operator.name == name))
    if operator is None:
        raise UnknownOperator(f"no operator {name!r}")
    return operator, result.rowcount == 1  # type: ignore[attr-defined]


async def by_key(db: AsyncSession, key: str) -> str | None:
    """The name of the operator whose key this is and is not revoked; None if there is none."""
    digest = hash_key(key)
    found = (
        await db.execute(
            select(Operator.name, Operator.key_hash).where(
                Operator.key_hash == digest, Operator.revoked_at.is_(None)
            )
        )
    ).first()
    # The index found the row by the hash; the comparison that decides is in constant time all the same.
    if found is None or not hmac.compare_digest(found.key_hash, digest):
        return None
    name: str = found.name
    return name


async def any_active(db: AsyncSession) -> bool:
    """Whether some operator's key is taken (not revoked)."""
    return await db.scalar(select(Operator.id).where(Operator.revoked_at.is_(None)).limit(1)) is not None
