"""A small client of the agent's REST API, for the CLI (`patronus status`, `paths`, `flows`, `policy`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from patronus.agent.config import SiteConfig


class ClientError(RuntimeError):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AgentClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 10.0) -> None:
        self.base = base_url.rstrip("/") + "/api/v1"
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> AgentClient:
        token = cfg.api_token
        if token is None:
            try:
                token = cfg.api_token_file.read_text().strip()
            except OSError as exc:
                raise ClientError(f"cannot read the API token {cfg.api_token_file}: {exc.strerror} "
                                  f"(is the agent of site {cfg.name} running, and are you root?)", 2) from None
        host, port = cfg.api_listen
        host = "127.0.0.1" if host == "0.0.0.0" else ("::1" if host == "::" else host)
        return cls(f"http://{'[' + host + ']' if ':' in host else host}:{port}", token)

    def _do(self, method: str, path: str, body: Any = None) -> httpx.Response:
        # policy names may contain '/', which the API's path converter accepts; spaces etc. are quoted
        path = quote(path, safe="/?=&")
        try:
            r = self._http.request(method, self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the agent at {self.base}: {exc}", 2) from None
        if r.status_code >= 400:
            try:
                data = r.json()
                errs = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in data.get("errors", []))
                msg = f"{data.get('error', r.reason_phrase)}" + (f" ({errs})" if errs else "")
            except ValueError:
                msg = r.text[:200]
            raise ClientError(f"{method} {path}: HTTP {r.status_code}: {msg}", 2 if r.status_code < 500 else 1)
        return r

    def get(self, path: str) -> Any:
        return self._do("GET", path).json()

    def put(self, path: str, body: Any) -> bool:
        """PUT; True when the agent created something (201), False when it replaced it."""
        return self._do("PUT", path, body).status_code == 201

    def post(self, path: str, body: Any) -> Any:
        return self._do("POST", path, body).json()

    def delete(self, path: str) -> None:
        self._do("DELETE", path)
