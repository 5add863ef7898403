"""What the Store raises when Postgres refuses a write for what it holds, not for a lost
connection: the writer holds such an object back instead of retrying the whole batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class Rejected(Exception):
    """Postgres refused the batch for what it holds (a value out of range, a violated
    constraint), not for a lost connection: writing the same rows again fails the same way.
    Nothing of the batch was written."""


class ChainGapError(Rejected):
    """An event's predecessor is neither stored nor in the batch: writing it would break the
    chain. Nothing of the batch was written."""


@contextmanager
def refusals_as_rejected() -> Iterator[None]:
    try:
        yield
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
        raise Rejected(str(error).strip()) from error
