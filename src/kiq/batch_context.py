"""The batch whose ``jobs()`` block is open in this context (a leaf: stdlib only).

Why a leaf: the client reads it on every push (the push joins the open batch, payload
field ``bid``), and the client sits below ``kiq.batch``, which opens the blocks.
A ContextVar, so threads and asyncio tasks each see their own block.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass
class OpenBlock:
    """One open ``jobs()`` block: the batch, the block's token, children made so far."""

    bid: str
    token: str
    children: int = field(default=0)

    def child_ids(self) -> tuple[str, str]:
        """(bid, token) for the next child batch made in this block.

        Derived from the block's token, so a job re-run after a crash (same jid, hence
        the same token) re-opens the same child batches instead of leaving the first
        run's open forever (which would keep the parent from ever completing). The bid
        is ``<root>.<digest>``, the root being the outermost batch's bid: on a Redis
        Cluster a batch family's keys share the root's hash tag (kiq.keys, the "batch"
        slot rule), so a child's outcome reaches its parent in one script.
        """
        self.children += 1
        seed = f"{self.bid}|{self.token}|{self.children}".encode()
        digest = hashlib.sha256(seed).hexdigest()
        return f"{self.bid.split('.', 1)[0]}.{digest[:20]}", digest[20:44]


_open: ContextVar[OpenBlock | None] = ContextVar("kiq_batch", default=None)


def current() -> OpenBlock | None:
    """The innermost open ``jobs()`` block, or None."""
    return _open.get()


def current_bid() -> str | None:
    block = _open.get()
    return None if block is None else block.bid


def enter(block: OpenBlock) -> Token[OpenBlock | None]:
    return _open.set(block)


def leave(token: Token[OpenBlock | None]) -> None:
    _open.reset(token)


def outside() -> Token[OpenBlock | None]:
    """No block open from here (``leave`` the token after): a job run inline by the
    test modes inside a ``jobs()`` block must not have its own pushes join that batch,
    as a worker's job would not (only ``self.batch.jobs()`` adds to a batch)."""
    return _open.set(None)
