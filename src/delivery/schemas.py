"""Request and response shapes. Money and weight are Decimal in, fixed-point strings out."""

import math
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, StrictInt

from delivery.models import WEIGHT_PLACES


def _fixed(places: int) -> PlainSerializer:
    quantum = Decimal(1).scaleb(-places)
    return PlainSerializer(lambda value: str(value.quantize(quantum)), return_type=str)


#: The largest id a BIGINT column holds (packages, companies) and an INT column holds (types): a larger
#: number can name nothing, and is refused as invalid input rather than sent to the database.
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1


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

    name: str = Field(min_length=1, max_length=255, description="1-255 characters after trimming")
    weight_kg: Decimal = Field(gt=0, le=1000, decimal_places=WEIGHT_PLACES, description="kg, up to 3 places")
    type_id: StrictInt = Field(ge=1, le=MAX_INT, description="an id from GET /types/")
    content_value_usd: Decimal = Field(
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


class PackagePage(Schema):
    items: list[PackageRead]
    total: int = Field(examples=[1])
    page: int = Field(examples=[1])
    size: int = Field(examples=[20])
    pages: int = Field(examples=[1])

    @classmethod
    def build(cls, items: list[PackageRead], *, total: int, page: int, size: int) -> "PackagePage":
        return cls(items=items, total=total, page=page, size=size, pages=math.ceil(total / size))


class RegistrationAccepted(Schema):
    status_id: uuid.UUID


RegistrationState = Literal["pending", "registered", "failed"]


class RegistrationStatus(Schema):
    status_id: uuid.UUID
    state: RegistrationState
    done: bool
    error: bool
    error_message: str | None
    package_id: int | None


class TransportCompanyBind(Schema):
    model_config = ConfigDict(extra="forbid")

    company_id: StrictInt = Field(ge=1, le=MAX_BIGINT, examples=[7])


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


class JobAccepted(Schema):
    task_id: str


class JobState(Schema):
    task_id: str
    state: str = Field(examples=["SUCCESS"])
    result: dict[str, int] | None = Field(examples=[{"priced": 3}])
    error: str | None
