"""Debug sessions, fleet side: `debug.open`, `debug.close`, `debug.list` (docs/debug.md).

A session is one signed `DebugSession` published retained on `ef/{node}/debug/session/{id}`
with the MQTT v5 message expiry set to its length: the cloud broker, the bridge and the site
broker all drop it when it is over, and the node's agent ends it then by itself. `close`
clears the retained message (an empty payload). The retained requests are the sessions' only
record: the service follows `ef/+/debug/session/+` (`Board.seen`), so after a restart it knows
again what is open; a session is a look, not a change, so nothing goes to SQLite.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from edgefleet.fleet import api
from edgefleet.fleet.board import Board
from edgefleet.fleet.errors import FleetError
from edgefleet.fleet.library import Fleet
from edgefleet.fleet.nodes import node_row
from shared.errors import TopicError
from shared.messages import DebugSession, iso, now_ns
from shared.topics import Topics


def _board(fleet: Fleet) -> Board:
    board: Board = fleet.debug
    if board.publish is None:
        raise FleetError("internal", "this fleet cannot publish (no broker connection)")
    return board


def _topics(fleet: Fleet, node: str) -> Topics:
    return Topics(node, fleet.config.prefix)


def view(fleet: Fleet, request: DebugSession, agent: dict[str, Any] | None) -> api.DebugSessionView:
    topics = _topics(fleet, request.site)
    data, state = topics.debug_watch(request.session)[1], topics.debug_state(request.session)
    return api.DebugSessionView(
        session=request.session,
        node=request.site,
        topics=request.topics,
        rate_hz=request.rate_hz,
        issued=iso(request.issued),
        expires_at=iso(request.expires),
        expires_ns=request.expires,
        author=request.author,
        topic=data,
        state_topic=state,
        agent=agent,
    )


def _agent_sessions(fleet: Fleet, node: str) -> dict[str, dict[str, Any]]:
    """What the node's agent says it has open (its status's `agent.debug`)."""
    with fleet.store.read() as db:
        row = node_row(db, node)
    agent = json.loads(row["agent"] or "{}") if row else {}
    entries = agent.get("debug") if isinstance(agent, dict) else None
    if not isinstance(entries, list):
        return {}
    return {str(e.get("session")): e for e in entries if isinstance(e, dict)}


def debug_open(fleet: Fleet, req: api.DebugOpenRequest) -> api.DebugOpenResult:
    limits = fleet.config.debug
    board = _board(fleet)
    with fleet.store.read() as db:
        if node_row(db, req.node) is None:
            raise FleetError(
                "not_found",
                f"no node {req.node!r}: the fleet has not heard from it (edgefleet node list)",
            )
    topics = _topics(fleet, req.node)
    if len(req.topics) > limits.max_filters:
        raise FleetError(
            "bad_filter", f"{len(req.topics)} topic filters; at most {limits.max_filters}"
        )
    filters = []
    for text in req.topics:
        try:
            filters.append(topics.debug_filter(text))
        except TopicError as exc:
            raise FleetError("bad_filter", str(exc)) from None
    if req.seconds > limits.max_seconds:
        raise FleetError(
            "too_long",
            f"{req.seconds:g} s is longer than this fleet allows ({limits.max_seconds:g} s, "
            "debug.max_seconds in fleet.yaml); open a new session when this one ends",
        )
    if req.rate_hz > limits.max_rate_hz:
        raise FleetError(
            "too_fast",
            f"{req.rate_hz:g} messages/s per topic is more than this fleet allows "
            f"({limits.max_rate_hz:g}, debug.max_rate_hz in fleet.yaml)",
        )
    if fleet.signing_key is None:
        raise FleetError(
            "no_signing_key",
            "debug sessions are signed like desired states: set signing_key in fleet.yaml",
        )
    with board.lock:  # the count and the new session together: two opens at once count right
        open_ = board.open_now(req.node)
        if len(open_) >= limits.max_sessions:
            raise FleetError(
                "too_many_sessions",
                f"node {req.node} has {len(open_)} debug sessions open, the most this fleet "
                f"allows (debug.max_sessions); close one (edgefleet debug list / close)",
            )
        now = now_ns()
        request = DebugSession(
            site=req.node,
            session=uuid.uuid4().hex[:12],
            topics=filters,
            rate_hz=req.rate_hz,
            expires=now + int(req.seconds * 1e9),
            issued=now,
            author=req.author,
        )
        board.sessions[request.session] = request
    wire = fleet.signing_key.sign(request.to_wire())
    try:
        assert board.publish is not None
        board.publish(topics.debug_session(request.session), wire, math.ceil(req.seconds))
    except Exception:
        board.seen(request.session, None)
        raise
    shown = view(fleet, request, None)
    return api.DebugOpenResult(
        session=request.session,
        node=req.node,
        expires_at=shown.expires_at,
        topic=shown.topic,
        state_topic=shown.state_topic,
        topics=filters,
        rate_hz=req.rate_hz,
    )


def debug_close(fleet: Fleet, req: api.DebugCloseRequest) -> api.DebugCloseResult:
    board = _board(fleet)
    with board.lock:
        request = next((r for r in board.open_now() if r.session == req.session), None)
    if request is None:
        raise FleetError(
            "not_found", f"no open debug session {req.session!r} (edgefleet debug list)"
        )
    assert board.publish is not None
    board.publish(_topics(fleet, request.site).debug_session(request.session), None, None)
    board.seen(request.session, None)
    return api.DebugCloseResult(session=request.session, node=request.site)


def debug_list(fleet: Fleet, req: api.DebugListRequest) -> api.DebugListResult:
    board: Board = fleet.debug
    with board.lock:
        sessions = board.open_now(req.node)
    agents: dict[str, dict[str, dict[str, Any]]] = {}
    views = []
    for request in sessions:
        if request.site not in agents:
            agents[request.site] = _agent_sessions(fleet, request.site)
        views.append(view(fleet, request, agents[request.site].get(request.session)))
    return api.DebugListResult(sessions=views)
