"""emulation.wait.wait_for: the one way the test-bed waits for a condition."""

from __future__ import annotations

import itertools

import pytest

from emulation.wait import wait_for


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "ready"])
    assert wait_for(lambda: next(values), 5, "readiness", interval_s=0.001) == "ready"


def test_a_timeout_names_what_never_came() -> None:
    with pytest.raises(TimeoutError, match=r"timed out after 0.02 s waiting for the relay"):
        wait_for(lambda: False, 0.02, "the relay", interval_s=0.005)


def test_a_message_function_and_an_error_type_of_the_callers() -> None:
    pending = {"hq", "br"}

    class RunError(RuntimeError):
        pass
    with pytest.raises(RunError, match="not Up at: br, hq"):
        wait_for(lambda: not pending, 0.01, lambda: f"not Up at: {', '.join(sorted(pending))}", interval_s=0.005,
                 error=RunError)


def test_retried_errors_are_not_yet_and_the_last_is_named_other_errors_propagate() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 3:
            raise ConnectionError("refused")
        return True
    assert wait_for(flaky, 5, "the API", interval_s=0.001, retry=(ConnectionError,))
    with pytest.raises(TimeoutError, match=r"last error: refused"):
        wait_for(lambda: (_ for _ in ()).throw(ConnectionError("refused")), 0.01, "the API", interval_s=0.002,
                 retry=(ConnectionError,))
    with pytest.raises(KeyError):
        wait_for(lambda: {}["gone"], 5, "the agent", retry=(ConnectionError,))
