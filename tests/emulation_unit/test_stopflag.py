"""emulation.traffic.stopflag: the traffic tools' loops stop on the signals they were given."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from emulation.traffic.stopflag import StopFlag

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_the_flag_is_set_by_its_signals_only(restore_handlers: None) -> None:
    stop = StopFlag(signal.SIGUSR1, signal.SIGINT)
    assert not stop
    os.kill(os.getpid(), signal.SIGUSR1)     # handlers run in the main thread, before kill returns
    assert stop
    assert signal.getsignal(signal.SIGTERM) is not stop._on_signal


def test_sigterm_by_default(restore_handlers: None) -> None:
    stop = StopFlag()
    assert not stop
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop
