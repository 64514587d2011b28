"""The audit hash chain, verified by the audit service's own check on its database
(`AUDIT_*`)."""

from __future__ import annotations

from audit.app import check_chain
from audit.config import Settings
from audit.domain.entries import ChainNotChecked, ChainReport


async def verify() -> ChainReport | ChainNotChecked:
    return await check_chain(Settings())
