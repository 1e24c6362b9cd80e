"""Console users, their roles and the audit log, in one SQLite file (sqlite-utils).

Passwords are hashed with argon2id (argon2-cffi, the password hashing competition's winner,
with its recommended parameters); only the hash is stored. The schema has a version table and
forward migrations like the fleet's store, so a newer console opens an older file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlite_utils
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shared.errors import ConfigError
from shared.messages import now_ns

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")
MIN_PASSWORD = 8


class Role(StrEnum):
    VIEWER = "viewer"  # looks: every page, live data
    OPERATOR = "operator"  # also changes the fleet: deploy, cancel, roll back, archive


@dataclass(frozen=True)
class User:
    name: str
    role: Role


def _v1(db: sqlite_utils.Database) -> None:
    db.table("users").create(
        {"name": str, "role": str, "hash": str, "created_ns": int}, pk="name", not_null={"hash"}
    )
    db.table("audit").create(
        {
            "id": int,
            "t_ns": int,
            "user": str,
            "role": str,
            "action": str,  # the fleet command
            "args": str,  # JSON, as sent
            "ok": int,
            "detail": str,  # the refusal, or what the command made (a deployment id)
        },
        pk="id",
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1]

_hasher = PasswordHasher()
# Verifying a name that does not exist costs the same as one that does (no user enumeration
# by timing).
_DUMMY = _hasher.hash("not a password of anyone")


class Users:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"{path}: schema version {version} is newer than this console knows "
                    f"({len(MIGRATIONS)}): upgrade edgefleet"
                )
            for step in MIGRATIONS[version:]:
                step(db)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", [len(MIGRATIONS)])

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite_utils.Database]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            yield sqlite_utils.Database(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def add(self, name: str, role: Role, password: str, replace: bool = False) -> User:
        if not name or not set(name) <= NAME_CHARS or len(name) > 64:
            raise ValueError(f"user name {name!r}: letters, digits and . _ @ - only, up to 64")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"the password must have at least {MIN_PASSWORD} characters")
        with self._db() as db:
            exists = db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone()
            if exists and not replace:
                raise ValueError(f"user {name!r} exists; give --replace to set a new password")
            row = {"name": name, "role": str(role), "hash": _hasher.hash(password)}
            db.table("users").upsert({**row, "created_ns": now_ns()}, pk="name")
        return User(name, role)

    def remove(self, name: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM users WHERE name = ?", [name]).rowcount > 0

    def all(self) -> list[User]:
        with self._db() as db:
            rows = db.execute("SELECT name, role FROM users ORDER BY name").fetchall()
        return [User(n, Role(r)) for n, r in rows]

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is theirs, else None."""
        with self._db() as db:
            row = db.execute("SELECT role, hash FROM users WHERE name = ?", [name]).fetchone()
        try:
            _hasher.verify(row[1] if row else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, Role(row[0])) if row else None

    def role_of(self, name: str) -> Role | None:
        """The role now: a user removed or demoted loses rights at the next request."""
        with self._db() as db:
            row = db.execute("SELECT role FROM users WHERE name = ?", [name]).fetchone()
        return Role(row[0]) if row else None

    def record(
        self, user: User, action: str, args: dict[str, Any], ok: bool, detail: str = ""
    ) -> None:
        with self._db() as db:
            db.table("audit").insert(
                {
                    "t_ns": now_ns(),
                    "user": user.name,
                    "role": str(user.role),
                    "action": action,
                    "args": json.dumps(args, sort_keys=True),
                    "ok": int(ok),
                    "detail": detail[:500],
                }
            )

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT t_ns, user, role, action, args, ok, detail FROM audit "
                "ORDER BY id DESC LIMIT ?",
                [limit],
            ).fetchall()
        keys = ("t_ns", "user", "role", "action", "args", "ok", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]
