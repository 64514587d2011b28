"""Who may do what: `viewer` reads, `admin` reads and changes; and why a caller is refused."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"
    CHANGE = "change"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.ADMIN: frozenset({Permission.READ, Permission.CHANGE}),
}


@dataclass(frozen=True)
class Identity:
    """The caller behind a token; its name becomes the `actor` of what it causes."""

    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]


@dataclass(frozen=True)
class StoredToken:
    """A token as the service knows it: whose it is, and whether it was revoked."""

    identity: Identity
    revoked: bool


class AccessRefused(Exception):
    """A request refused for its credentials. `str()` is what the caller is told; `why` is
    the fuller account for the audit trail, and `holder` whose token it was, if known."""

    code = "access_refused"

    def __init__(self, message: str, *, why: str, holder: Identity | None = None) -> None:
        super().__init__(message)
        self.why = why
        self.holder = holder


class Unauthenticated(AccessRefused):
    code = "unauthenticated"


class Forbidden(AccessRefused):
    code = "forbidden"


# The caller is told the same for an unknown and a revoked token, so that a guess learns
# nothing; the audit trail tells them apart.
UNKNOWN_OR_REVOKED = "The bearer token is unknown or revoked."


def check_access(
    presented: bool, token: StoredToken | None, permission: Permission | None
) -> Identity:
    """The identity behind a presented token if it may do `permission` (None: anything that
    needs a valid token); otherwise raises why not."""
    if not presented:
        raise Unauthenticated("A bearer token is required.", why="no bearer token")
    if token is None:
        raise Unauthenticated(UNKNOWN_OR_REVOKED, why="unknown bearer token")
    who = token.identity
    if token.revoked:
        raise Unauthenticated(UNKNOWN_OR_REVOKED, why=f"revoked token of '{who.name}'", holder=who)
    if permission is not None and not who.may(permission):
        refusal = f"Role '{who.role}' may not {permission.value} orders."
        raise Forbidden(refusal, why=f"role '{who.role}' may not {permission.value}", holder=who)
    return who
