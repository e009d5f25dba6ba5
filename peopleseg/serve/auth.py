"""Optional API keys. Clients send `Authorization: Bearer KEY` or `X-API-Key: KEY`; WebSocket clients, which a
browser cannot give headers, may send `{"api_key": "KEY"}` as their first message instead.

Keys are compared with `hmac.compare_digest` against every configured key, without stopping at the first match, so
the time taken says nothing about how much of a key was right or which key matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from peopleseg.serve.problems import ServeProblem

BEARER = "bearer "
KEY_HEADER = "x-api-key"


class ApiKeys:
    """The set of accepted keys; an empty set means authentication is off."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        # Bytes, so compare_digest accepts any candidate (it refuses non-ASCII str). The config admits only ASCII
        # keys: headers arrive as latin-1 text, JSON as Unicode, and ASCII is the one text both read the same.
        self._keys = tuple(dict.fromkeys(key.encode("utf-8") for key in keys if key))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def accepts(self, candidate: str | None) -> bool:
        """True when authentication is off, or `candidate` is one of the keys."""
        if not self._keys:
            return True
        if not candidate:
            return False
        try:
            given = candidate.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate from JSON ("\ud800"): no key is made of those
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)  # no short cut: every key is compared
        return matched

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Raise 401 unless the headers carry an accepted key (or authentication is off)."""
        if not self._keys:
            return
        candidate = key_from_headers(headers)
        if candidate is None:
            raise unauthorized("this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        if not self.accepts(candidate):
            raise unauthorized("the API key is not valid")


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request offers, from `X-API-Key` or a Bearer `Authorization` header; None when it offers none."""
    key = headers.get(KEY_HEADER)
    if key:
        return key.strip()
    authorization = headers.get("authorization", "")
    if authorization[: len(BEARER)].lower() == BEARER:
        return authorization[len(BEARER) :].strip() or None
    return None


def unauthorized(message: str) -> ServeProblem:
    return ServeProblem(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="peopleseg"'})
