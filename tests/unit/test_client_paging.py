"""List and Inventory follow next_page_token until it is empty (pure: pages are handed in).

The arbiter pages both (List 1,000 and Inventory 256 per page by default); a client that
read only the first page would silently see part of the fleet. An arbiter that ignores
paging answers everything with an empty token, which must still be one complete call.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hwbp.client import paging, wire
from hwbp.errors import HwbpError

Page = tuple[Sequence[str], str]


class Pages:
    """Serves fixed pages and records the token each request carried."""

    def __init__(self, pages: dict[str, Page]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    def __call__(self, token: str) -> Page:
        self.asked.append(token)
        return self.pages[token]

    async def aio(self, token: str) -> Page:
        return self(token)


THREE: dict[str, Page] = {"": (["a", "b"], "t1"), "t1": ([], "t2"), "t2": (["c"], "")}


def test_every_page_is_fetched_with_the_previous_token() -> None:
    fetch = Pages(THREE)
    assert paging.collect(fetch, key=str) == ["a", "b", "c"]
    assert fetch.asked == ["", "t1", "t2"]  # an empty page with a token is not the end


def test_a_server_that_ignores_paging_is_one_call() -> None:
    fetch = Pages({"": (["a", "b", "c"], "")})
    assert paging.collect(fetch, key=str) == ["a", "b", "c"]
    assert fetch.asked == [""]


def test_an_item_seen_on_two_pages_is_listed_once() -> None:
    fetch = Pages({"": (["a", "b"], "t1"), "t1": (["b", "c"], "")})
    assert paging.collect(fetch, key=str) == ["a", "b", "c"]


def test_a_token_that_comes_back_is_an_error_not_an_endless_loop() -> None:
    fetch = Pages({"": (["a"], "t1"), "t1": (["b"], "t1")})
    with pytest.raises(HwbpError, match="page token"):
        paging.collect(fetch, key=str)
    assert fetch.asked == ["", "t1"]


async def test_the_async_client_follows_pages_too() -> None:
    fetch = Pages(THREE)
    assert await paging.collect_aio(fetch.aio, key=str) == ["a", "b", "c"]
    assert fetch.asked == ["", "t1", "t2"]


def test_requests_carry_a_page_size_and_the_token() -> None:
    lst = wire.list_request("h1", session_id="s", page_token="t1", request_id="q")
    assert (lst.host, lst.session_id, lst.page_token, lst.request_id) == ("h1", "s", "t1", "q")
    assert lst.page_size == paging.LIST_PAGE_SIZE
    inv = wire.inventory_request(None, page_token="t2", request_id="q")
    assert (inv.host, inv.page_token, inv.page_size) == ("", "t2", paging.INVENTORY_PAGE_SIZE)
    assert 0 < paging.INVENTORY_PAGE_SIZE <= 4096 and 0 < paging.LIST_PAGE_SIZE <= 10_000
