"""Settings from the environment and `.env`: a variable set to an empty value counts as unset."""

from pathlib import Path

import pytest

from delivery.config import Settings
from tests.factories import app_client
from tests.stack import Stack


@pytest.fixture
def folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting in the environment, and a working folder whose `.env` is the test's own."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _set(monkeypatch: pytest.MonkeyPatch, folder: Path, source: str, values: dict[str, str]) -> None:
    if source == "environment":
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    else:
        (folder / ".env").write_text("".join(f"{name}={value}\n" for name, value in values.items()))


@pytest.mark.parametrize("source", ["environment", ".env"])
def test_every_blank_variable_counts_as_unset(
    folder: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """As an `.env` or a compose default leaves them (`REDIS_URL=`): the defaults, not a crash at start."""
    defaults = Settings()
    _set(monkeypatch, folder, source, dict.fromkeys(Settings.model_fields, ""))
    assert Settings() == defaults
    assert Settings().ADMIN_TOKEN is None and Settings().REDIS_URL is None


@pytest.mark.parametrize("source", ["environment", ".env"])
def test_an_admin_token_of_spaces_is_no_token(
    folder: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    _set(monkeypatch, folder, source, {"ADMIN_TOKEN": "   "})
    assert Settings().ADMIN_TOKEN is None


@pytest.mark.parametrize("source", ["environment", ".env"])
async def test_a_blank_admin_token_keeps_the_operator_endpoints_closed(
    stack: Stack, folder: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    environment = stack.env(ADMIN_TOKEN="")
    _set(monkeypatch, folder, source, {name: environment.get(name, "") for name in Settings.model_fields})
    async with app_client(Settings()) as http:
        for token in ("", " "):
            response = await http.post("/admin/jobs/price-packages/", headers={"X-Admin-Token": token})
            assert response.status_code == 403, response.text
            assert "not configured" in response.json()["detail"]
