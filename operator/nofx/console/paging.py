"""Pages of a Kubernetes list, one API chunk at a time (limit/continue), never the whole list.

The API server filters Runs only by namespace and labels, while the console also filters by
phase, template and account: a page is filled from successive chunks, and the cursor of the
next page remembers the chunk it stopped in (its continue token) and how far into it, since
asking again with the same token and limit returns the same chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# A page of an unfiltered list is one chunk. A filtered one reads chunks of this size, and at
# most this many of them per page, then offers "more" rather than scan on.
FILTERED_CHUNK = 250
MAX_CHUNKS = 8

Fetch = Callable[[str, int], tuple[list[dict[str, Any]], str]]
"""(continue token, limit) -> (items, the next continue token or '')."""


@dataclass(frozen=True)
class Cursor:
    token: str = ""  # the API's continue token of the chunk to read; '' for the first
    skip: int = 0  # items of that chunk that earlier pages already went through


@dataclass(frozen=True)
class RunFilters:
    namespace: str = ""
    phase: str = ""
    template: str = ""
    account: str = ""

    @property
    def beyond_namespace(self) -> bool:
        """Whether the console must filter what the API server returns."""
        return bool(self.phase or self.template or self.account)

    def keep(self, run: Mapping[str, Any]) -> bool:
        spec, status = run.get("spec") or {}, run.get("status") or {}
        phase = status.get("phase") or "Pending"
        template = (spec.get("templateRef") or {}).get("name") or ""
        account = status.get("account") or spec.get("account") or ""
        return (
            (not self.phase or phase == self.phase)
            and (not self.template or template == self.template)
            and (not self.account or account == self.account)
        )


@dataclass
class Page:
    items: list[dict[str, Any]] = field(default_factory=list)
    next: Cursor | None = None  # None: the list ends here
    scanned: int = 0  # objects read to fill the page
    cut_short: bool = False  # stopped after MAX_CHUNKS with the page not yet full


def fill_page(
    fetch: Fetch,
    cursor: Cursor,
    size: int,
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> Page:
    """Up to `size` items that `keep` accepts, starting at `cursor`."""
    chunk = FILTERED_CHUNK if keep else size
    page = Page()
    token, skip = cursor.token, cursor.skip
    for _ in range(MAX_CHUNKS):
        items, next_token = fetch(token, chunk)
        for index in range(skip, len(items)):
            page.scanned += 1
            if keep is not None and not keep(items[index]):
                continue
            page.items.append(items[index])
            if len(page.items) == size:
                if index + 1 < len(items):
                    page.next = Cursor(token, index + 1)
                elif next_token:
                    page.next = Cursor(next_token)
                return page
        if not next_token:
            return page
        token, skip = next_token, 0
    page.next, page.cut_short = Cursor(token), True
    return page
