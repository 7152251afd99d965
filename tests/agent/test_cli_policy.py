"""`patronus policy apply`: a file is read like any file of ours (bounded YAML, every error at once, nothing
applied on one), and each policy reaches the agent under its own name, however that name is spelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import patronus.cli as cli

pytestmark = pytest.mark.unit


class _Client:
    def __init__(self) -> None:
        self.puts: list[tuple[str, Any]] = []

    def put(self, path: str, body: Any) -> bool:
        self.puts.append((path, body))
        return True


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> _Client:
    c = _Client()
    monkeypatch.setattr(cli, "_client", lambda config: c)
    return c


def _apply(tmp_path: Path, text: str | bytes) -> Any:
    f = tmp_path / "p.yaml"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    return CliRunner().invoke(cli.app, ["policy", "apply", "-c", "site.yaml", "-f", str(f)])


def test_names_with_url_characters_are_quoted(tmp_path: Path, client: _Client) -> None:
    r = _apply(tmp_path, "policies:\n- {name: 'what? #1 100%', priority: 5}\n- {name: VoIP/Video, priority: 6}\n")
    assert r.exit_code == 0, r.output
    assert [p for p, _ in client.puts] == ["/policies/what%3F%20%231%20100%25", "/policies/VoIP%2FVideo"]


@pytest.mark.parametrize("text", [b"\xff\xfename: x\n", "name: x\x1b\n", "[" * 500 + "]" * 500,
                                  '- {name: "a\\nb", priority: 1}\n', "priority: 1" + "0" * 400 + "\n"])
def test_a_bad_file_is_refused_with_a_reason_and_nothing_is_applied(tmp_path: Path, client: _Client,
                                                                     text: str | bytes) -> None:
    r = _apply(tmp_path, text)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert client.puts == []
