"""The console's web application (FastAPI): pages rendered on the server (Jinja2), a JSON API
for the pages' small scripts, and the live timeline pushed as server-sent events.

Sign-in keeps the user name in a signed session cookie (Starlette's, itsdangerous) that expires
`session_s` after the last request and `session_max_s` after sign-in, whatever the browser
keeps; the role is read again from the users file at every request, so removing a user or
demoting one takes effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import StreamingResponse

from edgefleet.console import assets
from edgefleet.console.backend import Fleet, Forbidden, authorize, changes
from edgefleet.console.decimate import column_ns
from edgefleet.console.live import LiveFeed, LiveStore
from edgefleet.console.users import Role, User, Users
from edgefleet.console.views import side_by_side, site_health
from edgefleet.fleet.errors import FleetError

HERE = Path(__file__).parent
MAX_WIDTH_PX = 4000
MAX_WINDOW_S = 3600.0


@dataclass
class Console:
    mode: str  # cloud | edge
    users: Users
    fleet: Fleet
    feed: LiveFeed
    store: LiveStore
    secret: str
    site: str | None = None  # edge: the one site
    prefix: str = "ef"
    session_s: float = 3600.0
    session_max_s: float = 12 * 3600.0
    tick_s: float = 0.05  # how often a live view may be sent what changed
    deployment_poll_s: float = 15.0  # a deployment page's poll besides the pushed moves


class SignIn(Exception):
    """The request needs a signed-in user."""


class ServerTiming:
    """`Server-Timing: app;dur=MS` on every response: the console's own time up to its first
    byte (the fleet calls and the template), which a browser's devtools and
    bench/console_nodes.py read apart from the network. Plain ASGI: a streamed response (the
    live SSE) passes through untouched but for the header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - t0) * 1e3:.1f}".encode()
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"server-timing", took)],
                }
            await send(message)

        await self.app(scope, receive, timed)


def create_app(console: Console) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        feed = asyncio.create_task(console.feed.run(console.store), name="feed")
        try:
            yield
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)

    app = FastAPI(
        title="edgefleet console",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=console.secret,
        session_cookie="edgefleet_session",
        max_age=int(console.session_s),
        same_site="strict",  # with JSON-only writes: no cross-site request can change a thing
    )
    app.add_middleware(ServerTiming)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.console = console

    @app.exception_handler(SignIn)
    async def to_sign_in(request: Request, _exc: SignIn) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": {"code": "signed_out", "message": "sign in"}}, 401)
        return RedirectResponse(f"/login?next={request.url.path}", 303)

    def user_of(request: Request) -> User:
        session = request.session
        name, since = session.get("user"), session.get("since", 0)
        if not name or time.time() - since > console.session_max_s:
            session.clear()
            raise SignIn()
        role = console.users.role_of(name)
        if role is None:
            session.clear()
            raise SignIn()
        return User(name, role)

    def page(request: Request, template: str, user: User, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            template,
            {
                "user": user,
                "operator": user.role is Role.OPERATOR,
                "mode": console.mode,
                "site": console.site,
                "feed": console.feed.describe(),
                **context,
            },
        )

    async def ask(cmd: str, **args: Any) -> dict[str, Any]:
        return await console.fleet.call(cmd, args)

    async def ask_or_error(cmd: str, **args: Any) -> tuple[dict[str, Any], str | None]:
        try:
            return await ask(cmd, **args), None
        except FleetError as exc:
            return {}, f"{exc.code}: {exc.message}"

    # ------------------------------------------------------------------ sign-in

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {"next": next, "error": None})

    @app.post("/login")
    async def login(
        request: Request,
        name: str = Form(...),
        password: str = Form(...),
        next: str = Form("/"),
    ) -> Response:
        user = await asyncio.to_thread(console.users.verify, name, password)
        if user is None:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": next, "error": "wrong name or password"},
                status_code=401,
            )
        request.session.clear()
        request.session.update({"user": user.name, "since": time.time()})
        # only a path of this console: "//host" and "/\\host" would leave it
        local = next.startswith("/") and not next.startswith(("//", "/\\"))
        target = next if local else "/"
        return RedirectResponse(target, 303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", 303)

    @app.get("/")
    async def home(request: Request) -> Response:
        user_of(request)
        return RedirectResponse("/library" if console.mode == "cloud" else "/nodes", 303)

    # ------------------------------------------------------------------ pages: the fleet

    @app.get("/library", response_class=HTMLResponse)
    async def library(request: Request) -> HTMLResponse:
        user = user_of(request)
        listed, error = await ask_or_error("library.list")
        resources = listed.get("resources", [])
        shown = await asyncio.gather(
            *(ask_or_error("library.show", ref=r["name"]) for r in resources)
        )
        details = {
            r["name"]: s[0].get("resource", {}) for r, s in zip(resources, shown, strict=True)
        }
        return page(
            request, "library.html", user, resources=resources, details=details, error=error
        )

    @app.get("/library/{name}", response_class=HTMLResponse)
    async def resource(request: Request, name: str, version: int | None = None) -> HTMLResponse:
        user = user_of(request)
        ref = f"{name}@{version}" if version else name
        shown, error = await ask_or_error("library.show", ref=ref)
        listed, _ = await ask_or_error("library.list")
        deployed: list[str] = next(
            (r["deployed"] for r in listed.get("resources", []) if r["name"] == name), []
        )
        return page(
            request, "resource.html", user, name=name, shown=shown, deployed=deployed, error=error
        )

    @app.get("/flows", response_class=HTMLResponse)
    async def flows(request: Request) -> HTMLResponse:
        user = user_of(request)
        listed, error = await ask_or_error("flow.list")
        return page(request, "flows.html", user, flows=listed.get("flows", []), error=error)

    @app.get("/flows/{name}", response_class=HTMLResponse)
    async def flow(request: Request, name: str, version: int | None = None) -> HTMLResponse:
        user = user_of(request)
        history, error = await ask_or_error("flow.history", name=name)
        ref = f"{name}@{version}" if version else name
        shown, error2 = await ask_or_error("flow.show", ref=ref)
        return page(
            request,
            "flow.html",
            user,
            name=name,
            history=history.get("versions", []),
            flow=shown.get("flow"),
            error=error or error2,
        )

    @app.get("/flows/{name}/diff", response_class=HTMLResponse)
    async def flow_diff(request: Request, name: str, a: int, b: int) -> HTMLResponse:
        user = user_of(request)
        result, error = await ask_or_error("flow.diff", a=f"{name}@{a}", b=f"{name}@{b}")
        diff = result.get("diff") or {}
        return page(
            request,
            "diff.html",
            user,
            name=name,
            a=a,
            b=b,
            diff=diff,
            flow_rows=side_by_side(diff.get("flow_file", "")),
            scripts=[(s, side_by_side(s.get("diff", ""))) for s in diff.get("scripts", [])],
            error=error,
        )

    @app.get("/nodes", response_class=HTMLResponse)
    async def nodes(request: Request, selector: str = "") -> HTMLResponse:
        user = user_of(request)
        if console.mode == "edge":
            assert console.site is not None
            listed: dict[str, Any] = {"nodes": [{"site": console.site, "labels": {}, "flows": []}]}
            error = None
            groups: dict[str, Any] = {}
        else:
            args = {"selector": selector} if selector else {}
            (listed, error), (groups, _) = await asyncio.gather(
                ask_or_error("node.list", **args), ask_or_error("group.list")
            )
        rows = [{**n, "health": site_health(console.store, n["site"])} for n in listed["nodes"]]
        # the fleet view: the nodes that drift most first; nodes without a figure last
        rows.sort(key=lambda r: -(r["health"]["drift_max"] or -1.0))
        return page(
            request,
            "nodes.html",
            user,
            nodes=rows,
            groups=groups.get("groups", []),
            selector=selector,
            error=error,
        )

    @app.get("/nodes/{site}", response_class=HTMLResponse)
    async def node(request: Request, site: str) -> HTMLResponse:
        user = user_of(request)
        shown: dict[str, Any] = {}
        history: dict[str, Any] = {}
        error = None
        if console.mode == "cloud":
            shown, error = await ask_or_error("node.show", site=site)
            history, _ = await ask_or_error("node.history", site=site)
        return page(
            request,
            "node.html",
            user,
            node_site=site,
            shown=shown,
            history=history.get("revisions", []),
            health=site_health(console.store, site),
            error=error,
        )

    @app.get("/deployments", response_class=HTMLResponse)
    async def deployments(request: Request) -> HTMLResponse:
        user = user_of(request)
        listed, error = await ask_or_error("deployment.list", limit=50)
        flows, _ = await ask_or_error("flow.list")
        groups, _ = await ask_or_error("group.list")
        versions = {}
        for f in flows.get("flows", []):
            history, _ = await ask_or_error("flow.history", name=f["name"])
            versions[f["name"]] = [v["version"] for v in history.get("versions", [])][::-1]
        return page(
            request,
            "deployments.html",
            user,
            deployments=listed.get("deployments", []),
            versions=versions,
            groups=groups.get("groups", []),
            error=error,
        )

    @app.get("/deployments/{dep}", response_class=HTMLResponse)
    async def deployment(request: Request, dep: str) -> HTMLResponse:
        user = user_of(request)
        shown, error = await ask_or_error("deployment.show", id=dep)
        return page(
            request,
            "deployment.html",
            user,
            shown=shown,
            dep=dep,
            error=error,
            poll_s=console.deployment_poll_s,
        )

    @app.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request) -> HTMLResponse:
        user = user_of(request)
        rows = await asyncio.to_thread(console.users.audit)
        return page(request, "audit.html", user, rows=rows)

    # ------------------------------------------------------------------ pages: live data

    @app.get("/timeline", response_class=HTMLResponse)
    async def timeline(request: Request) -> HTMLResponse:
        user = user_of(request)
        return page(request, "timeline.html", user, uplot=assets.status())

    @app.get("/inspector", response_class=HTMLResponse)
    async def inspector(request: Request) -> HTMLResponse:
        user = user_of(request)
        return page(request, "inspector.html", user)

    @app.get("/vendor/uplot/{name}")
    async def uplot(request: Request, name: str) -> Response:
        user_of(request)
        path = assets.file(name)
        if path is None:
            raise HTTPException(404, assets.status().message)
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(path.read_bytes(), media_type=media)

    # ------------------------------------------------------------------ JSON API

    @app.post("/api/cmd/{cmd}")
    async def command(request: Request, cmd: str) -> Response:
        user = user_of(request)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": {"code": "invalid", "message": "send JSON"}}, 415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"code": "invalid", "message": "bad JSON"}}, 400)
        args = body if isinstance(body, dict) else {}
        try:
            sent = authorize(user, cmd, args)
        except Forbidden as exc:
            await asyncio.to_thread(console.users.record, user, cmd, args, False, str(exc))
            return JSONResponse({"error": {"code": "forbidden", "message": str(exc)}}, 403)
        except FleetError as exc:
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, 404)
        try:
            result = await console.fleet.call(cmd, sent)
        except FleetError as exc:
            if changes(cmd):
                detail = f"{exc.code}: {exc.message}"
                await asyncio.to_thread(console.users.record, user, cmd, sent, False, detail)
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, 409)
        if changes(cmd):
            made = (result.get("deployment") or {}).get("id", "") if "deployment" in result else ""
            await asyncio.to_thread(console.users.record, user, cmd, sent, True, made)
        return JSONResponse({"result": result})

    @app.get("/api/live/series")
    async def series(request: Request) -> Response:
        user_of(request)
        return JSONResponse(
            {"series": console.store.series_list(), "feed": console.feed.describe()}
        )

    @app.get("/api/live/range")
    async def live_range(
        request: Request, series: str, start_ms: float, end_ms: float, width: int = 800
    ) -> Response:
        """One decimated view of a past range (a zoom), from what the store keeps."""
        user_of(request)
        width = max(1, min(width, MAX_WIDTH_PX))
        t0, t1 = int(start_ms * 1e6), int(end_ms * 1e6)
        col = column_ns(max(1, t1 - t0), width)
        first = t0 // col
        count = max(1, min(MAX_WIDTH_PX, t1 // col - first + 1))
        data = console.store.columns(series.split(","), col, first, count)
        return JSONResponse({"col_ns": col, "first": first, "count": count, "series": data})

    @app.get("/api/live/stream")
    async def stream(
        request: Request, series: str, window_s: float = 60.0, width: int = 800
    ) -> Response:
        """Server-sent events: first the whole window, then the columns that changed."""
        user_of(request)
        ids = [s for s in series.split(",") if s]
        window_s = max(1.0, min(window_s, MAX_WINDOW_S))
        width = max(10, min(width, MAX_WIDTH_PX))
        col = column_ns(int(window_s * 1e9), width)

        async def events() -> AsyncIterator[str]:
            sent_col: int | None = None
            seen = -1
            while not await request.is_disconnected():
                version = console.store.version
                if version != seen:
                    now_col = time.time_ns() // col
                    first = now_col - width + 1 if sent_col is None else sent_col
                    count = now_col - first + 1
                    data = console.store.columns(ids, col, first, count)
                    body = {"col_ns": col, "first": first, "count": count, "series": data}
                    yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                    sent_col, seen = now_col, version  # the last column may still grow: resent
                await asyncio.sleep(console.tick_s)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/deployments/{dep}/events")
    async def deployment_events(request: Request, dep: str) -> Response:
        """Server-sent events: one each time deployment `dep` moves (a DeploymentEvent from
        the fleet, or one of its nodes reported); the page then asks `deployment.show`."""
        user_of(request)

        async def events() -> AsyncIterator[str]:
            seen = console.store.moves.get(dep)
            quiet = 0.0
            yield ": open\n\n"
            while not await request.is_disconnected():
                await console.store.wait_moved(1.0)
                move = console.store.moves.get(dep)
                if move != seen and move is not None:
                    seen, quiet = move, 0.0
                    body = {"deployment": dep, "what": move.what, "site": move.site}
                    yield f"data: {json.dumps(body)}\n\n"
                else:
                    quiet += 1.0
                    if quiet >= 15.0:  # a comment keeps proxies from closing an idle stream
                        quiet = 0.0
                        yield ": idle\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.post("/api/live/watch")
    async def watch(request: Request) -> Response:
        """Ask the feed for topics of a site (cloud: where a debug session would open)."""
        user = user_of(request)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": {"code": "invalid", "message": "send JSON"}}, 415)
        body = await request.json()
        site, topics = body.get("site"), body.get("topics")
        if not isinstance(site, str) or not isinstance(topics, list) or not topics:
            message = "give site (a site id) and topics (a list of topic filters)"
            return JSONResponse({"error": {"code": "invalid", "message": message}}, 400)
        # relative filters (`results/#`) are of that site
        own = f"{console.prefix}/"
        filters = [t if t.startswith(own) else f"{own}{site}/{t}" for t in map(str, topics)]
        said = await console.feed.watch(site, filters, f"{user.name}@console")
        # a debug session changes what the site's bridge carries: recorded like a change
        args = {"site": site, "topics": filters}
        await asyncio.to_thread(console.users.record, user, "live.watch", args, True, said)
        return JSONResponse({"result": {"message": said, "topics": filters}})

    @app.get("/api/inspector/topics")
    async def topics(request: Request, contains: str = "") -> Response:
        user_of(request)
        return JSONResponse({"topics": console.store.topic_tree(contains)})

    @app.get("/api/inspector/messages")
    async def messages(request: Request, topic: str, limit: int = 20) -> Response:
        user_of(request)
        return JSONResponse({"topic": topic, "messages": console.store.last_messages(topic, limit)})

    return app
