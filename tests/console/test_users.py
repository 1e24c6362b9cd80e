"""Users in SQLite with argon2 hashes, the audit log, and sessions that expire."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.console.app import Console, create_app
from edgefleet.console.backend import NoFleet
from edgefleet.console.live import LiveStore
from edgefleet.console.users import Role, Users


def test_passwords_are_hashed_and_checked(tmp_path: Path) -> None:
    users = Users(tmp_path / "users.db")
    users.add("ana", Role.OPERATOR, "long enough")
    assert users.verify("ana", "long enough") is not None
    assert users.verify("ana", "wrong password") is None
    assert users.verify("nobody", "long enough") is None
    stored = sqlite3.connect(tmp_path / "users.db").execute("SELECT hash FROM users").fetchone()
    assert stored[0].startswith("$argon2id$") and "long enough" not in stored[0]
    with pytest.raises(ValueError, match="exists"):
        users.add("ana", Role.VIEWER, "long enough")
    with pytest.raises(ValueError, match="at least"):
        users.add("bob", Role.VIEWER, "short")
    users.add("ana", Role.VIEWER, "another one", replace=True)
    assert users.role_of("ana") is Role.VIEWER
    assert Users(tmp_path / "users.db").all()[0].name == "ana"  # reopened: schema kept


class Idle:
    def describe(self) -> str:
        return "nothing"

    async def watch(self, site: str, topics: list[str], author: str) -> str:
        return f"{author} watches {topics}"

    async def run(self, store: LiveStore) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Console]]:
    users = Users(tmp_path / "users.db")
    users.add("olga", Role.VIEWER, "long enough")
    console = Console("edge", users, NoFleet(), Idle(), LiveStore(), "k" * 64, site="s1")
    app = create_app(console)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as c:
        yield c, console


async def sign_in(
    c: httpx.AsyncClient, password: str = "long enough", then: str = "/nodes"
) -> httpx.Response:
    data: dict[str, Any] = {"name": "olga", "password": password, "next": then}
    return await c.post("/login", data=data)


async def test_a_session_ends_at_its_maximum_age_and_with_its_user(
    client: tuple[httpx.AsyncClient, Console],
) -> None:
    c, console = client
    assert (await c.get("/nodes")).status_code == 303  # to the sign-in page
    assert (await c.get("/api/live/series")).status_code == 401
    assert (await sign_in(c, "wrong")).status_code == 401
    for elsewhere in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        assert (await sign_in(c, then=elsewhere)).headers["location"] == "/"
    assert (await sign_in(c)).headers["location"] == "/nodes"
    assert (await c.get("/nodes")).status_code == 200
    console.session_max_s = 0.0  # as if signed in longer ago than allowed
    assert (await c.get("/api/live/series")).status_code == 401
    console.session_max_s = 3600.0
    await sign_in(c)
    assert (await c.get("/api/live/series")).status_code == 200
    console.users.remove("olga")  # removed: out at the next request
    assert (await c.get("/api/live/series")).status_code == 401


async def test_a_viewer_is_refused_a_change_and_it_is_recorded(
    client: tuple[httpx.AsyncClient, Console],
) -> None:
    c, console = client
    await sign_in(c)
    answer = await c.post("/api/cmd/deploy", json={"flows": ["pump@1"], "nodes": ["s1"]})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    (row,) = console.users.audit()
    assert (row["user"], row["action"], row["ok"]) == ("olga", "deploy", 0)
    form = await c.post("/api/cmd/deploy", data={"flows": "pump@1"})
    assert form.status_code == 415  # only JSON: a cross-site form cannot send it


async def test_watch_asks_the_feed_with_absolute_topics_and_the_user(
    client: tuple[httpx.AsyncClient, Console],
) -> None:
    c, _console = client
    await sign_in(c)
    answer = await c.post("/api/live/watch", json={"site": "s9", "topics": ["results/#"]})
    assert answer.json()["result"]["message"] == "olga@console watches ['ef/s9/results/#']"
    bad = await c.post("/api/live/watch", json={"site": "s9", "topics": []})
    assert bad.status_code == 400
