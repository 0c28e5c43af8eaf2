"""Enumerators for ``kiq.IterableJob.build_enumerator``: ``(item, cursor)`` pairs.

Example::

    def build_enumerator(self, export_id: int, *, cursor):
        return kiq.iter.sqlalchemy_batches(session, select(Row), Row.id, cursor=cursor)

Every helper takes the ``cursor`` the job was given (None on a first run) and yields
each item with *its own* cursor, a JSON value from which the same helper starts again
at that item (Sidekiq's ``array_enumerator``, ``active_record_batches_enumerator``,
``csv_enumerator``). Nothing here imports SQLAlchemy or Django: the query objects are
used through their own methods, so neither is a dependency of kiq.

  * ``items(seq)``, ``batches(seq, n)``, ``range_items(start, stop)``: offsets;
  * ``sqlalchemy_batches(session, select, column)``: keyset batches, ``column > cursor``
    (the cursor is the last key of the batch before), never OFFSET;
  * ``django_batches(queryset, field)``: the same over a Django queryset;
  * ``csv_rows(path)``: rows of a CSV file by row offset (the header row excluded);
  * ``async_items(aiterable)``: an async iterator for ``async def each_iteration`` jobs.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from typing import Any


def _offset(cursor: Any) -> int:
    if cursor is None:
        return 0
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise ValueError(f"this enumerator's cursor is an offset >= 0, got {cursor!r}")
    return cursor


def items(seq: Sequence[Any], *, cursor: Any = None) -> Iterator[tuple[Any, int]]:
    """Each element of ``seq`` with its index (Sidekiq's ``array_enumerator``)."""
    for index in range(_offset(cursor), len(seq)):
        yield seq[index], index


def batches(
    seq: Sequence[Any], size: int, *, cursor: Any = None
) -> Iterator[tuple[list[Any], int]]:
    """Slices of ``size`` elements with their batch index (``array_batches_enumerator``)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for index in range(_offset(cursor), (len(seq) + size - 1) // size):
        yield list(seq[index * size : (index + 1) * size]), index


def range_items(start: int, stop: int, *, cursor: Any = None) -> Iterator[tuple[int, int]]:
    """Each integer of ``range(start, stop)``, its own cursor."""
    first = start if cursor is None else int(cursor)
    for number in range(max(start, first), stop):
        yield number, number


def sqlalchemy_batches(
    session: Any, select: Any, column: Any, *, cursor: Any = None, batch_size: int = 500
) -> Iterator[tuple[list[Any], Any]]:
    """Keyset batches of a SQLAlchemy 2 ``select`` ordered by a unique ``column``.

    Each batch is ``session.scalars(select.where(column > last).order_by(column)
    .limit(batch_size)).all()``; the cursor yielded with a batch is the key of the row
    before it (None for the first), so a resumed job reads that batch again and an
    interrupted one never skips a row. ``column`` must be unique and not null (a
    primary key): keyset paging over a non-unique column would skip equal keys.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    key_name = column.key
    last = cursor
    while True:
        query = select if last is None else select.where(column > last)
        rows = list(session.scalars(query.order_by(column).limit(batch_size)).all())
        if not rows:
            return
        yield rows, last
        last = _key(rows[-1], key_name)
        if len(rows) < batch_size:
            return


def django_batches(
    queryset: Any, field: str = "pk", *, cursor: Any = None, batch_size: int = 500
) -> Iterator[tuple[list[Any], Any]]:
    """Keyset batches of a Django queryset by a unique ``field`` (default ``pk``),
    with the same cursor rule as ``sqlalchemy_batches``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    last = cursor
    while True:
        query = queryset if last is None else queryset.filter(**{f"{field}__gt": last})
        rows = list(query.order_by(field)[:batch_size])
        if not rows:
            return
        yield rows, last
        last = _key(rows[-1], field)
        if len(rows) < batch_size:
            return


def _key(row: Any, name: str) -> Any:
    value = getattr(row, name)
    if not isinstance(value, int | str | float):
        raise TypeError(f"the keyset column {name!r} must be an int or str, got {value!r}")
    return value


def csv_rows(
    path: str, *, cursor: Any = None, **reader: Any
) -> Iterator[tuple[dict[str, str], int]]:
    """Each data row of the CSV file ``path`` as a dict, with its row offset
    (Sidekiq's ``csv_enumerator`` with headers). ``reader``: ``csv.DictReader`` options."""
    skip = _offset(cursor)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, **reader)
        for index, row in enumerate(itertools.islice(rows, skip, None), start=skip):
            yield row, index


async def async_items(
    source: AsyncIterable[Any], *, cursor: Any = None
) -> AsyncIterator[tuple[Any, int]]:
    """Each item of an async iterable with its offset; a resumed job skips ``cursor``
    items (the source must yield them in the same order again)."""
    skip = _offset(cursor)
    index = 0
    async for item in source:
        if index >= skip:
            yield item, index
        index += 1
