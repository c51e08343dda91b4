"""Streaming call sites: `Migration.stream` and `astream` route a call whose arms yield chunks.

A stream is timed twice: to its first chunk (the cell's `first_chunk` sketch, judged by the
`latency_first_chunk` gate) and to its end (the cell's `latency`, judged by the `latency` gate). A candidate
that fails before its first chunk falls back to legacy, as in `run`; a failure after it cannot be undone (the
caller has the chunks already), so it is recorded as an error of that arm and raised to the caller. Shadow
runs consume the other arm's stream off the request path and compare the assembled outputs: the chunks
joined when they are all text (or all bytes), else the list of chunks.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from crossfade.routing import CANDIDATE, LEGACY, Decision, Route

if TYPE_CHECKING:
    from crossfade.migration import Migration

STREAM_TYPES: Final = frozenset({types.GeneratorType, types.AsyncGeneratorType})
"""What a generator function or an async generator function returns: `run` and `arun` refuse these."""


class StreamMisuse(TypeError):
    """`run` or `arun` was given a (async) generator function: its answer is a stream, use stream/astream."""


def misuse(method: str, result: Any) -> StreamMisuse:
    """The error for `run`/`arun` given a stream, saying which method to use instead."""
    if isinstance(result, types.GeneratorType):
        right = "for chunk in mig.stream(key, legacy_gen_fn, candidate_gen_fn, *args): ..."
    else:
        right = "async for chunk in mig.astream(key, legacy_agen_fn, candidate_agen_fn, *args): ..."
        if hasattr(result, "aclose"):
            result.aclose().close()  # never started: closing the coroutine avoids a "never awaited" warning
    return StreamMisuse(
        f"mig.{method}(...) was given a function that returns a {type(result).__name__}: its answer is a stream, "
        f"and {method} would time and compare the generator object, not the chunks. Instead, you want:\n    {right}"
    )


def assembled(chunks: list[Any]) -> Any:
    """A stream's whole output: its chunks joined when all are text (or all bytes), else the list."""
    if chunks and all(isinstance(c, str) for c in chunks):
        return "".join(chunks)
    if chunks and all(isinstance(c, bytes) for c in chunks):
        return b"".join(chunks)
    return list(chunks)


def assembling(fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
    """`fn` made into a function that consumes its stream and returns the assembled output (for shadow runs)."""
    return lambda *args, **kwargs: assembled(list(fn(*args, **kwargs)))


def aassembling(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    """`assembling` for an async generator function."""

    async def consume(*args: Any, **kwargs: Any) -> Any:
        return assembled([chunk async for chunk in fn(*args, **kwargs)])

    return consume


class _Tally:
    """One stream being served: when it started and gave its first chunk, and its chunks when shadowed or
    priced (`cost=` and `metrics=` read the assembled output)."""

    __slots__ = ("handle", "decision", "start", "first_at", "chunks")

    def __init__(self, handle: Migration, decision: Decision, start: int) -> None:
        self.handle = handle
        self.decision = decision
        self.start = start
        self.first_at = 0
        options = handle.options
        keep = decision.shadow or options.cost is not None or options.metrics is not None
        self.chunks: list[Any] | None = [] if keep else None

    def chunk(self, chunk: Any) -> None:
        if not self.first_at:
            self.first_at = self.handle._now()
        if self.chunks is not None:
            self.chunks.append(chunk)

    def file(self, *, error: bool = False, fallback: bool = False, ended: bool = True) -> None:
        """Count the stream as one call of its arm: latency to the first chunk and, when it ended, to the end."""
        handle = self.handle
        elapsed = handle._now() - self.start
        # The assembled output is priced (and its metrics read) only when the stream ended well and was kept.
        answer = {"answer": assembled(self.chunks)} if ended and not error and self.chunks is not None else {}
        handle._file(self.decision.stage, self.decision.arm, elapsed if ended else None, error=error,
                     fallback=fallback, first_chunk_ns=self.first_at - self.start if self.first_at else None,
                     **answer)


def stream(handle: Migration, key: object, legacy: Callable[..., Iterator[Any]],
           candidate: Callable[..., Iterator[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
    """The body of `Migration.stream`."""
    route = handle._bound[0]
    if route is None:
        yield from legacy(*args, **kwargs)
        return
    decision = route.decide(key)
    tally = _Tally(handle, decision, handle._now())
    chunks: Iterator[Any] = iter(())
    served: Any = None  # the arm's own generator, closed when the caller stops reading
    if decision.arm is CANDIDATE:
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            chunks = served = iter(candidate(*args, **kwargs))
            first = next(chunks)
        except StopIteration:
            tally.file()
            _shadow(handle, route, decision, tally, legacy, legacy, args, kwargs, None)
            return
        except Exception as exc:
            handle._candidate_failed(decision, handle._now() - tally.start, exc, fallback)
            yield from legacy(*args, **kwargs)
            return
        chunks = itertools.chain((first,), chunks)
        other = legacy
    else:
        other = candidate
    try:
        if decision.arm is LEGACY:
            chunks = served = iter(legacy(*args, **kwargs))
        for chunk in chunks:
            tally.chunk(chunk)
            yield chunk
    except GeneratorExit:  # the caller stopped reading: a call, timed to its first chunk only
        close = getattr(served, "close", None)
        if close is not None:
            close()
        tally.file(ended=False)
        raise
    except Exception as exc:
        tally.file(error=True)
        _shadow(handle, route, decision, tally, other, legacy, args, kwargs, exc)
        raise
    tally.file()
    _shadow(handle, route, decision, tally, other, legacy, args, kwargs, None)


async def astream(handle: Migration, key: object, legacy: Callable[..., AsyncIterator[Any]],
                  candidate: Callable[..., AsyncIterator[Any]], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    """The body of `Migration.astream`: `fallback.timeout` bounds the candidate's wait for its first chunk."""
    route = handle._bound[0]
    if route is None:
        async for chunk in legacy(*args, **kwargs):
            yield chunk
        return
    decision = route.decide(key)
    tally = _Tally(handle, decision, handle._now())
    chunks: Any = None
    if decision.arm is CANDIDATE:
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            async with asyncio.timeout(fallback.timeout if fallback is not None else None):
                chunks = candidate(*args, **kwargs)
                first = await anext(chunks)
        except StopAsyncIteration:
            tally.file()
            _ashadow(handle, route, decision, tally, legacy, legacy, args, kwargs, None)
            return
        except Exception as exc:
            if chunks is not None:
                await _aclose(chunks)
            handle._candidate_failed(decision, handle._now() - tally.start, exc, fallback)
            async for chunk in legacy(*args, **kwargs):
                yield chunk
            return
        chunks = _prepend(first, chunks)
        other = legacy
    else:
        other = candidate
    try:
        if decision.arm is LEGACY:
            chunks = legacy(*args, **kwargs)
        async for chunk in chunks:
            tally.chunk(chunk)
            yield chunk
    except GeneratorExit:
        tally.file(ended=False)
        raise
    except asyncio.CancelledError:
        tally.file(ended=False)
        raise
    except Exception as exc:
        tally.file(error=True)
        _ashadow(handle, route, decision, tally, other, legacy, args, kwargs, exc)
        raise
    tally.file()
    _ashadow(handle, route, decision, tally, other, legacy, args, kwargs, None)


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for chunk in rest:
        yield chunk


async def _aclose(chunks: Any) -> None:
    try:
        await chunks.aclose()
    except Exception:  # the candidate's own cleanup failing changes nothing: it failed already
        pass


def _shadow(handle: Migration, route: Route, decision: Decision, tally: _Tally, other: Callable[..., Any],
            legacy: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            error: BaseException | None) -> None:
    if not decision.shadow or tally.chunks is None:
        return
    value = None if error is not None else assembled(tally.chunks)
    handle._shadow(route, decision, assembling(other), assembling(legacy), args, kwargs, value, error)


def _ashadow(handle: Migration, route: Route, decision: Decision, tally: _Tally, other: Callable[..., Any],
             legacy: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             error: BaseException | None) -> None:
    if not decision.shadow or tally.chunks is None:
        return
    value = None if error is not None else assembled(tally.chunks)
    handle._ashadow(route, decision, aassembling(other), aassembling(legacy), args, kwargs, value, error)
