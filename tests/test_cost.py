"""The delivery cost: (weight_kg * 0.5 + content_value_usd * 0.01) * usd_rub, rounded half-up to 0.01."""

import json
import math
from decimal import Decimal, FloatOperation, localcontext
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from delivery.jobs import compute_cost
from tests.fakebank import FIXTURES

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, database=None)


def cost(weight_kg: str, content_value_usd: str, usd_rub: str) -> Decimal:
    """compute_cost on exact inputs, with any mixing of float into Decimal arithmetic made an error."""
    with localcontext() as context:
        context.traps[FloatOperation] = True
        result = compute_cost(Decimal(weight_kg), Decimal(content_value_usd), Decimal(usd_rub))
    assert type(result) is Decimal
    return result


def exact_cost(weight_kg: Decimal, content_value_usd: Decimal, usd_rub: Decimal) -> Decimal:
    """The contract's formula in rationals, rounded half-up to 0.01, written as a 2-place decimal."""
    exact = (Fraction(weight_kg) / 2 + Fraction(content_value_usd) / 100) * Fraction(usd_rub)
    assert exact >= 0
    kopecks = math.floor(exact * 100 + Fraction(1, 2))
    return Decimal(f"{kopecks // 100}.{kopecks % 100:02d}")


def places(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


# --- Examples, worked by hand ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight_kg", "content_value_usd", "usd_rub", "expected"),
    [
        # (0.625 + 1.20) * 78.1959 = 142.7075175
        ("1.25", "120", "78.1959", "142.71"),
        ("1.250", "120.00", "78.1959", "142.71"),
        # (0.5 + 1.00) * 73.5744 = 110.3616
        ("1", "100", "73.5744", "110.36"),
        # (5 + 0.50) * 60.0924 = 330.5082
        ("10", "50", "60.0924", "330.51"),
        # 0.0005 * 0.0001 = 0.00000005: the smallest inputs cost nothing yet
        ("0.001", "0", "0.0001", "0.00"),
        # (0.0005 + 0.0001) * 100 = 0.06
        ("0.001", "0.01", "100", "0.06"),
        # (0.0005 + 0.0250) * 3 = 0.0765 → 0.08
        ("0.001", "2.50", "3.0000", "0.08"),
    ],
)
def test_examples(weight_kg: str, content_value_usd: str, usd_rub: str, expected: str) -> None:
    result = cost(weight_kg, content_value_usd, usd_rub)
    assert str(result) == expected
    assert places(result) == 2


@pytest.mark.parametrize(
    ("weight_kg", "content_value_usd", "usd_rub", "expected"),
    [
        # 0.0005 * 50 = 0.025 exactly: half-up gives 0.03 (half-even would give 0.02)
        ("0.001", "0", "50.0000", "0.03"),
        # 1.1725 * 10 = 11.725 exactly → 11.73 (half-even: 11.72)
        ("2.345", "0", "10.0000", "11.73"),
        # (0.0005 + 0.0045) * 1 = 0.005 exactly → 0.01 (half-even: 0.00)
        ("0.001", "0.45", "1.0000", "0.01"),
        # (0.5 + 9.99) * 4.5 = 47.205 exactly → 47.21 (half-even: 47.20)
        ("1", "999", "4.5000", "47.21"),
        # Halves that a binary-float pipeline, even one rounding via str(), lands just below:
        # 0.005 + 0.03 = 0.035 → 0.04
        ("0.010", "3", "1", "0.04"),
        # (0.5025 + 0.10) * 10 = 6.025 → 6.03
        ("1.005", "10", "10.0000", "6.03"),
        # (0.0045 + 10000) * 10 = 100000.045 → 100000.05
        ("0.009", "1000000", "10.0000", "100000.05"),
    ],
)
def test_exact_half_kopeck_rounds_up(
    weight_kg: str, content_value_usd: str, usd_rub: str, expected: str
) -> None:
    assert str(cost(weight_kg, content_value_usd, usd_rub)) == expected


@pytest.mark.parametrize(
    ("weight_kg", "content_value_usd", "usd_rub", "expected"),
    [
        # 0.0005 * 49.9999 = 0.02499995 → 0.02
        ("0.001", "0", "49.9999", "0.02"),
        # (0.0005 + 0.0045) * 0.9999 = 0.0049995 → 0.00
        ("0.001", "0.45", "0.9999", "0.00"),
        # 1.1725 * 9.9999 = 11.72488275 → 11.72
        ("2.345", "0", "9.9999", "11.72"),
    ],
)
def test_just_under_half_kopeck_rounds_down(
    weight_kg: str, content_value_usd: str, usd_rub: str, expected: str
) -> None:
    assert str(cost(weight_kg, content_value_usd, usd_rub)) == expected


def test_zero_content_value() -> None:
    # 0.625 * 78.1959 = 48.8724375
    assert str(cost("1.25", "0", "78.1959")) == "48.87"
    assert str(cost("1.25", "0.00", "78.1959")) == "48.87"
    # 0.5 * 78.1959 = 39.09795
    assert str(cost("1", "0", "78.1959")) == "39.10"


def test_maximum_inputs_are_exact() -> None:
    # (500 + 10,000,000) * 78.1959 = 781,998,097.95
    assert str(cost("1000", "1000000000", "78.1959")) == "781998097.95"
    assert str(cost("1000.000", "1000000000.00", "78.1959")) == "781998097.95"
    # 10,000,500 * 9999.9999 = 100,005,000,000 - 1,000.05 = 100,004,998,999.95
    assert str(cost("1000", "1000000000", "9999.9999")) == "100004998999.95"
    # (499.9995 + 9,999,999.9999) * 9999.9999 = 100,004,998,993.95000006 → …993.95
    assert str(cost("999.999", "999999999.99", "9999.9999")) == "100004998993.95"


def test_a_binary_float_in_the_formula_would_show() -> None:
    """Guards `cost`: the trap it sets does catch float mixed into Decimal arithmetic."""
    with localcontext() as context, pytest.raises(FloatOperation):
        context.traps[FloatOperation] = True
        Decimal("1.25") < 0.5  # noqa: B015


# --- Properties against the exact rational ------------------------------------------------------


def _fixture_rates() -> list[Decimal]:
    """Every currency's Value / Nominal in the recorded JSON answers (USD and the rest: up to 6 places)."""
    found = set()
    for path in sorted(FIXTURES.glob("daily_json*.js")):
        document = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
        for entry in document["Valute"].values():
            found.add(Decimal(entry["Value"]) / Decimal(entry["Nominal"]))
    return sorted(found)


FIXTURE_RATES = _fixture_rates()


def _written(places: int, low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Decimals with at most `places` places in [low, high] * 10^-places, in the ways a client may write
    them: "1.250" or normalised ("1.25", "1E+3")."""

    def build(units: int, normalised: bool) -> Decimal:
        amount = Decimal(units).scaleb(-places)
        return amount.normalize() if normalised else amount

    return st.builds(build, st.integers(low, high), st.booleans())


WEIGHTS = _written(3, 1, 1_000_000)
VALUES = _written(2, 0, 100_000_000_000)
RATES = st.one_of(st.sampled_from(FIXTURE_RATES), _written(4, 1, 10**10))


def test_fixture_rates_are_read() -> None:
    assert len(FIXTURE_RATES) > 30
    assert {Decimal("78.1959"), Decimal("73.5744"), Decimal("60.0924")} <= set(FIXTURE_RATES)
    assert all(rate > 0 for rate in FIXTURE_RATES)


@PROPERTY_SETTINGS
@given(weight_kg=WEIGHTS, content_value_usd=VALUES, usd_rub=RATES)
@example(
    weight_kg=Decimal("1000.000"), content_value_usd=Decimal("1000000000.00"), usd_rub=Decimal("9999.9999")
)
@example(weight_kg=Decimal("0.001"), content_value_usd=Decimal("0.00"), usd_rub=Decimal("0.0001"))
@example(weight_kg=Decimal("0.001"), content_value_usd=Decimal("0"), usd_rub=Decimal("50.0000"))
@example(weight_kg=Decimal("1E+3"), content_value_usd=Decimal("1E+9"), usd_rub=Decimal("78.1959"))
def test_cost_is_the_exact_rational_rounded_half_up(
    weight_kg: Decimal, content_value_usd: Decimal, usd_rub: Decimal
) -> None:
    with localcontext() as context:
        context.traps[FloatOperation] = True
        result = compute_cost(weight_kg, content_value_usd, usd_rub)
    assert type(result) is Decimal
    assert result.is_finite()
    assert places(result) == 2
    assert result == exact_cost(weight_kg, content_value_usd, usd_rub)


@PROPERTY_SETTINGS
@given(dollars=st.integers(0, 1_000_000_000), usd_rub=st.sampled_from(["1", "1.0000"]))
@example(dollars=3, usd_rub="1")
def test_half_kopeck_rounds_up_at_every_magnitude(dollars: int, usd_rub: str) -> None:
    """0.010 kg costs 0.005 USD: with a whole-dollar value the exact cost is `dollars` kopecks and a half."""
    up = cost("0.010", str(dollars), usd_rub)
    assert up == Decimal(dollars + 1).scaleb(-2)
    assert places(up) == 2
    # 0.009 kg: `dollars` kopecks and 0.45 of one.
    down = cost("0.009", str(dollars), usd_rub)
    assert down == Decimal(dollars).scaleb(-2)
    assert places(down) == 2


@PROPERTY_SETTINGS
@given(weight_kg=WEIGHTS, content_value_usd=VALUES, usd_rub=RATES)
def test_cost_grows_with_every_input(
    weight_kg: Decimal, content_value_usd: Decimal, usd_rub: Decimal
) -> None:
    """More weight, more value or a dearer dollar never makes delivery cheaper."""
    base = compute_cost(weight_kg, content_value_usd, usd_rub)
    assert compute_cost(weight_kg + Decimal("0.001"), content_value_usd, usd_rub) >= base
    assert compute_cost(weight_kg, content_value_usd + Decimal("0.01"), usd_rub) >= base
    assert compute_cost(weight_kg, content_value_usd, usd_rub + Decimal("0.0001")) >= base
