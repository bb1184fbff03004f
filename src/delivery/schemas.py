"""Request and response shapes. Money and weight are Decimal in, fixed-point strings out."""

import math
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictInt
from pydantic.config import JsonDict

from delivery.models import WEIGHT_PLACES


def _fixed(places: int) -> PlainSerializer:
    quantum = Decimal(1).scaleb(-places)
    return PlainSerializer(lambda value: str(value.quantize(quantum)), return_type=str)


#: The largest id a BIGINT column holds (packages, companies) and an INT column holds (types): a larger
#: number can name nothing, and is refused as invalid input rather than sent to the database.
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
#: The largest integer that every JSON tool holds exactly (JavaScript's Number.MAX_SAFE_INTEGER): a larger
#: bound, read as a binary float, is rounded up past what the server takes.
MAX_JSON_INT = 2**53 - 1


def _iso_date(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected a date as YYYY-MM-DD")
    if not isinstance(value, str | date):
        raise ValueError("expected a date as YYYY-MM-DD")
    return value


#: A calendar date written YYYY-MM-DD, and nothing else (no timestamps, no datetimes).
IsoDate = Annotated[date, BeforeValidator(_iso_date)]

Weight = Annotated[Decimal, _fixed(3)]
Money = Annotated[Decimal, _fixed(2)]

#: A weight or an amount sent as a string: plain digits and a point, no sign, exponent, spaces or leading
#: zeros; in range, with at most 3 (weight) or 2 (money) places, trailing zeros aside. The schema documents
#: the same pattern, so that a string it allows is one the server takes, and no other.
WEIGHT_PATTERN = (
    r"^(?:1000(?:\.0+)?|[1-9][0-9]{0,2}(?:\.[0-9]{1,3}0*)?|0\.(?:[1-9][0-9]{0,2}|0[1-9][0-9]?|00[1-9])0*)$"
)
MONEY_PATTERN = r"^(?:1000000000(?:\.0+)?|(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,2}0*)?)$"


def _matching(pattern: str, message: str) -> BeforeValidator:
    """A string must match `pattern`: the decimal parser alone takes `1e2`, `+1`, ` 1`, Arabic digits."""

    def check(value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(pattern, value):
            raise ValueError(message)
        return value

    return BeforeValidator(check)


def _documented(pattern: str, step: float) -> Any:
    """The schema's string branch gets `pattern`, its number branch the step of the places allowed."""

    def document(schema: JsonDict) -> None:
        branches = schema["anyOf"]
        assert isinstance(branches, list)
        for branch in branches:
            assert isinstance(branch, dict)
            if branch["type"] == "string":
                branch["pattern"] = pattern
            else:
                branch["multipleOf"] = step

    return Field(json_schema_extra=document)


WeightIn = Annotated[
    Decimal,
    _matching(WEIGHT_PATTERN, "expected a weight over 0 and up to 1000, with at most 3 places"),
    _documented(WEIGHT_PATTERN, 0.001),
]
MoneyIn = Annotated[
    Decimal,
    _matching(MONEY_PATTERN, "expected an amount from 0 to 1000000000, with at most 2 places"),
    _documented(MONEY_PATTERN, 0.01),
]


def _integral(value: object) -> object:
    # Request bodies parse JSON numbers as Decimal: 7.0 is an integer to JSON Schema, and so here.
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return value


#: An integer as JSON Schema counts them (`7` or `7.0`), never a string or a boolean.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


#: What the server trims: Python's whitespace (`str.strip()`), spelled out, since a pattern's `\s` is
#: ECMAScript's, which differs (it leaves out U+0085 and U+001C-U+001F, and takes U+FEFF).
_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
#: 1 to 255 characters once those are trimmed, as a JSON Schema pattern (searched, not anchored by itself):
#: what the lengths are checked on. In `[\s\S]`, any character, new lines included.
NAME_PATTERN = rf"^[{_SPACE}]*[^{_SPACE}](?:[\s\S]{{0,253}}[^{_SPACE}])?[{_SPACE}]*$"


def _trimmed_length_documented(schema: JsonDict) -> None:
    """The name's lengths hold after trimming, which `minLength` and `maxLength` cannot say: the document
    gives the pattern instead (the server still checks the lengths, whose errors the page knows)."""
    del schema["minLength"], schema["maxLength"]
    schema["pattern"] = NAME_PATTERN


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Problem(Schema):
    detail: str


class ConflictProblem(Problem):
    transport_company_id: int


class PackageTypeRead(Schema):
    id: int = Field(examples=[1])
    name: str = Field(examples=["clothes"])


class PackageCreate(Schema):
    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {"name": "Winter jacket", "weight_kg": "1.25", "type_id": 1, "content_value_usd": "120"}
            ]
        },
    )

    name: str = Field(
        min_length=1,
        max_length=255,
        description="1-255 characters after trimming",
        json_schema_extra=_trimmed_length_documented,
    )
    weight_kg: WeightIn = Field(gt=0, le=1000, decimal_places=WEIGHT_PLACES, description="kg, up to 3 places")
    type_id: JsonInt = Field(ge=1, le=MAX_INT, description="an id from GET /types/")
    content_value_usd: MoneyIn = Field(
        ge=0, le=1_000_000_000, decimal_places=2, description="USD, up to 2 places"
    )


class PackageRead(Schema):
    id: int = Field(examples=[17])
    name: str = Field(examples=["Winter jacket"])
    weight_kg: Weight = Field(examples=["1.250"])
    type: PackageTypeRead
    content_value_usd: Money = Field(examples=["120.00"])
    delivery_cost_rub: Money | None = Field(description="null: not calculated yet", examples=["5617.16"])
    transport_company_id: int | None = Field(examples=[None])
    created_at: datetime


ItemT = TypeVar("ItemT")
PageT = TypeVar("PageT", bound="Page[Any]")


class Page(Schema, Generic[ItemT]):
    """A page of a list: its items, how many there are in all, the page's number and size, how many pages."""

    items: list[ItemT]
    total: int = Field(examples=[1])
    page: int = Field(examples=[1])
    size: int = Field(examples=[20])
    pages: int = Field(examples=[1])

    @classmethod
    def build(cls: type[PageT], items: list[Any], *, total: int, page: int, size: int) -> PageT:
        return cls(items=items, total=total, page=page, size=size, pages=math.ceil(total / size))


class PackagePage(Page[PackageRead]):
    pass


class RegistrationAccepted(Schema):
    status_id: uuid.UUID


RegistrationState = Literal["pending", "registered", "failed"]


class StatusLike(Protocol):
    """What a registration's status record holds (`service.StatusRecord`)."""

    @property
    def state(self) -> RegistrationState: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def package_id(self) -> int | None: ...


class RegistrationStatus(Schema):
    status_id: uuid.UUID
    state: RegistrationState
    done: bool
    error: bool
    error_message: str | None
    package_id: int | None

    @classmethod
    def of(cls, status_id: uuid.UUID, record: StatusLike) -> "RegistrationStatus":
        """The answer for a status record: `done` once registered or failed, `error` when failed."""
        return cls(
            status_id=status_id,
            state=record.state,
            done=record.state != "pending",
            error=record.state == "failed",
            error_message=record.error_message,
            package_id=record.package_id,
        )


class TransportCompanyBind(Schema):
    model_config = ConfigDict(extra="forbid")

    company_id: JsonInt = Field(ge=1, le=MAX_JSON_INT, examples=[7])


class DailyTypeTotal(Schema):
    type: PackageTypeRead
    packages: int
    total_cost_rub: Money


class DailyCosts(Schema):
    date: date
    totals: list[DailyTypeTotal]


#: The most days one answer of the daily totals spans (both ends included): a leap year.
MAX_RANGE_DAYS = 366


class DailyCostsRange(Schema):
    """Every day of a range, in order, each with every type (zeros included)."""

    model_config = ConfigDict(populate_by_name=True)

    start: date = Field(alias="from", examples=["2025-06-01"])
    end: date = Field(alias="to", examples=["2025-06-30"])
    days: list[DailyCosts]


class PricingRunRead(Schema):
    finished_at: datetime
    outcome: Literal["ok", "no_rate"] = Field(description="no_rate: the bank's rate could not be had")
    priced: int = Field(examples=[12])


class Backlog(Schema):
    """What is still waiting: packages without a cost, registrations not yet done, and the last pricing."""

    packages_without_cost: int = Field(examples=[3])
    registrations_pending: int = Field(
        examples=[0], description="counted up to a cap; `registrations_pending_exact` is false beyond it"
    )
    registrations_pending_exact: bool
    last_cost_calculated_at: datetime | None = Field(
        description="when a cost was last calculated, at registration or by a pricing run; null: never"
    )
    last_pricing_run: PricingRunRead | None = Field(
        description="the pricing job's last run (kept 30 days); null: none since"
    )
    dead_letters: int = Field(
        0, examples=[0], description="registration jobs dead-lettered, not sent back yet"
    )
    oldest_dead_letter_at: datetime | None = Field(
        None, description="when the oldest dead letter was dead-lettered; null: none"
    )


class DeadLetterRead(Schema):
    registration_id: str | None = Field(description="null: the job's body names none")
    session_id: int | None
    reason: str = Field(examples=["type 3 no longer exists"])
    deliveries: int = Field(examples=[5], description="deliveries before it was dead-lettered")
    dead_at: datetime
    body: str = Field(description="the job as the worker received it (JSON)")


class DeadLetters(Schema):
    """The registration jobs that could not succeed, waiting for an operator to send them back."""

    count: int = Field(examples=[1])
    oldest_at: datetime | None = Field(description="when the oldest was dead-lettered; null: none")
    items: list[DeadLetterRead] = Field(description="the oldest, at most 20")


class DeadLettersRequeued(Schema):
    requeued: int = Field(examples=[1], description="dead letters sent back to the registration queue")


class JobAccepted(Schema):
    task_id: str


class JobState(Schema):
    task_id: str
    state: str = Field(examples=["SUCCESS"])
    result: dict[str, int] | None = Field(examples=[{"priced": 3}])
    error: str | None


class AuditEntryRead(Schema):
    at: datetime
    operator: str = Field(
        examples=["alice"],
        description="an operator's name, `admin` (ADMIN_TOKEN), or `shell:<user>` for a command",
    )
    action: str = Field(
        examples=["company.bind"],
        description=(
            "pricing.start, pricing.run, company.bind, operator.add, operator.revoke, dead_letters.requeue"
        ),
    )
    object: str | None = Field(examples=["package 17, company 7"], description="what it was done to")
    outcome: str = Field(
        examples=["refused: company 5 holds it"],
        description="`ok`, `refused` or `failed`, and after a colon what happened, when that says more",
    )
    request_id: str | None = Field(description="the request's X-Request-ID; null for a command")


class AuditPage(Page[AuditEntryRead]):
    """The audit trail, newest first."""


class CurrentOperator(Schema):
    operator: str = Field(examples=["alice"], description="the operator whose key the request carries")
