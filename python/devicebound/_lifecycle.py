"""Closes what is still open when the interpreter exits.

Client threads (message and feedback handlers, status callbacks) call into
Python. At exit, before the interpreter starts tearing down, every hub and
client still open is closed (its threads joined), and then the native module is
told to stop calling into Python at all, so that a C++ thread can never block
on, or be killed by, a finalizing interpreter.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

from . import _native

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()


def track(obj: Any) -> None:
    """Registers a hub or client to be closed at exit (if it is still open then)."""
    _live.add(obj)


def untrack(obj: Any) -> None:
    _live.discard(obj)


def _close_all() -> None:
    objects = list(_live)
    # Clients first: they use the hubs.
    objects.sort(key=lambda o: 1 if type(o).__name__ == "Hub" else 0)
    for obj in objects:
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - exiting: nothing left to report to
            pass
    _native._shutdown()


atexit.register(_close_all)
