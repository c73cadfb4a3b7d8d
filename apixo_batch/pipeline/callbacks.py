"""Callback mode's two pieces of set-up: the campaign's token, and the receiver."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from ..apixo.client import TaskStatus
from ..apixo.receiver import CallbackReceiver, HandlerResult, callback_url_with_token, new_token
from ..errors import ApixoError
from ..journal import Ledger
from .options import RunOptions

__all__ = ["callback_token", "listen"]


async def callback_token(ledger: Ledger, options: RunOptions) -> str | None:
    """Callback mode: the campaign's token, made once and kept in the journal."""
    if not (options.callback_url and options.listen):
        return None
    token = await ledger.callback_token(new_token())
    try:
        callback_url_with_token(options.callback_url, token)
    except ValueError as exc:
        raise ApixoError(f"callback mode: {exc}") from None
    return token


async def listen(
    options: RunOptions,
    token: str,
    handler: Callable[[TaskStatus], Awaitable[HandlerResult]],
    stack: contextlib.AsyncExitStack,
) -> None:
    """Start the receiver; it stops when the run's resources close."""
    assert options.listen is not None
    host, port = options.listen
    try:
        receiver = CallbackReceiver(host, port, token, handler)
        await receiver.start()
    except (OSError, ValueError) as exc:
        raise ApixoError(f"callback mode: {exc}") from None
    stack.push_async_callback(receiver.stop)
