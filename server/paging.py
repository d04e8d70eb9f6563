"""Page tokens for List and Inventory: opaque to clients, checked when they come back."""

from __future__ import annotations

import base64
import binascii
import json

from hwbp.errors import InvalidArgument


def page_size(asked: int, default: int, most: int) -> int:
    if asked < 0:
        raise InvalidArgument(f"page_size must be >= 0, got {asked}", field="page_size")
    return min(asked or default, most)


def encode(host: str, after: str) -> str:
    """A token naming the last item of a page: the next page starts after it."""
    return base64.urlsafe_b64encode(json.dumps([host, after]).encode()).decode()


def decode(token: str) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        host, after = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(host, str) and isinstance(after, str):
            return host, after
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError):
        pass
    raise InvalidArgument(
        "page_token is not one this arbiter issued (pass next_page_token as it came)",
        field="page_token",
    )
