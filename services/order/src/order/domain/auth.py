"""Who may do what: `viewer` reads, `admin` reads and changes."""

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
