"""Request and response shapes. Money and weight are Decimal in, fixed-point strings out."""

import math
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt

from delivery.models import WEIGHT_PLACES


def _fixed(places: int) -> PlainSerializer:
    quantum = Decimal(1).scaleb(-places)
    return PlainSerializer(lambda value: str(value.quantize(quantum)), return_type=str)


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
    type_id: StrictInt = Field(ge=1, description="an id from GET /types/")
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

    company_id: StrictInt = Field(ge=1, examples=[7])


class DailyTypeTotal(Schema):
    type: PackageTypeRead
    packages: int
    total_cost_rub: Money


class DailyCosts(Schema):
    date: date
    totals: list[DailyTypeTotal]


class JobAccepted(Schema):
    task_id: str


class JobState(Schema):
    task_id: str
    state: str = Field(examples=["SUCCESS"])
    result: dict[str, int] | None = Field(examples=[{"priced": 3}])
    error: str | None
