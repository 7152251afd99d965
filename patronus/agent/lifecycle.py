"""The agent's lifecycle: what a start did, undone newest first, each step on its own thread.

Every step of a start registers how it is undone, on an `AsyncExitStack`: how a cleanup stop (or a
failed fresh start) removes it, and what a graceful stop does with it (`keep`: None leaves it for
the next agent, as the dataplane is left). A step names the thread it belongs to: `LOOP` for what
lives on the event loop (sockets with readers, the store, the pid file), `KERNEL` for pyroute2 and
wireguard work, which runs on the agent's one kernel worker thread (pyroute2's synchronous objects
cannot run inside a running loop). A step that fails to undo is logged and the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("patronus.agent")
T = TypeVar("T")


class Thread(enum.Enum):
    LOOP = "loop"            # the event loop's thread
    KERNEL = "kernel"        # the kernel worker thread


@dataclass(frozen=True)
class Step:
    what: str
    remove: Callable[[], Any]
    keep: Callable[[], Any] | None
    thread: Thread


class Lifecycle:
    """The undo steps of one start, and the kernel worker they may run on."""

    def __init__(self) -> None:
        self.kernel = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patronus-kernel")
        self._stack = contextlib.AsyncExitStack()
        self._cleanup = False
        self._kept: list[str] = []
        self.steps = 0

    async def on_kernel(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the kernel worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.kernel, fn, *args)

    def add(self, what: str, remove: Callable[[], Any], keep: Callable[[], Any] | None, thread: Thread) -> None:
        """Register the undo of a step just done."""
        step = Step(what, remove, keep, thread)
        self._stack.push_async_callback(self._undo, step)
        self.steps += 1

    async def _undo(self, step: Step) -> None:
        fn = step.remove if self._cleanup else step.keep
        if fn is None:
            self._kept.append(step.what)
            return
        try:
            if step.thread is Thread.LOOP:
                fn()
            else:
                await self.on_kernel(fn)
        except Exception as exc:
            log.error("stop: %s: %s", step.what, exc)

    async def close(self, cleanup: bool) -> list[str]:
        """Undo every step, newest first (`cleanup`: remove, else keep); return what was left as it
        is, oldest first. Safe to call more than once; the kernel worker ends with the last call."""
        self._cleanup = cleanup
        self._kept = []
        await self._stack.aclose()
        self.steps = 0
        self.kernel.shutdown(wait=True)
        return list(reversed(self._kept))
