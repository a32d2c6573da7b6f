"""Worker processes: each input is analysed in a child process under a time and a memory
limit, so that a crash, a native segfault, a hang or a blow-up costs one input its result (a
reason the engine turns into CC000) and never the run.

Results come back in the order of the inputs, whatever the number of workers, so that output
does not depend on ``--jobs``. Workers are started fresh after any failure. Where the platform
forks safely (Linux and other Unixes but macOS), a worker is forked and talks through two
pipes: the parent has not imported LibCST, so a fork is cheap, and multiprocessing is not
needed (its import alone costs a command on one file a twentieth of its time). Elsewhere
multiprocessing spawns them.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

try:  # the C pickler alone: pickle.py adds its pure-Python twin, a start-up cost of every run
    from _pickle import dumps, loads
except ImportError:  # pragma: no cover - a Python without the accelerator
    from pickle import dumps, loads

T = TypeVar("T")
R = TypeVar("R")

MIB = 1 << 20

# Told how many inputs are done, of how many, after each one (a progress bar).
Progress = Callable[[int, int], None]


class Limits(NamedTuple):
    """How long and how much memory one input may take: a base plus an allowance per megabyte
    of input, since the cost of an analysis grows with the size of its input."""

    seconds: float = 60.0
    seconds_per_mib: float = 60.0
    memory_mib: int = 2048
    memory_per_mib: int = 1024

    def time_for(self, size: int) -> float:
        return self.seconds + self.seconds_per_mib * size / MIB

    def memory_for(self, size: int) -> int:
        return (self.memory_mib + self.memory_per_mib * size // MIB) * MIB


DEFAULT_LIMITS = Limits()


class Failure(NamedTuple):
    """An input whose analysis did not finish: why, in words for the report."""

    reason: str


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _address_space() -> int:
    """The worker's present address space (what it inherited from the parent included), which
    the limit comes on top of; 0 where the system does not tell."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_memory(allowance: int) -> None:
    """At most ``allowance`` more bytes of address space for this process."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no rlimits
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + allowance
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


class Connection(Protocol):
    """One end of the channel between the parent and a worker: pickled messages both ways."""

    def send(self, message: Any) -> None: ...

    def recv(self) -> Any: ...

    def poll(self) -> bool: ...

    def close(self) -> None: ...


class _Pipes:
    """A forked worker's channel, seen from one end: it reads one pipe and writes the other,
    each message pickled after its length. Reading a pipe whose other end is closed (the
    worker died) raises ``EOFError``; writing one raises ``BrokenPipeError``.

    The parent's writing end does not block: what the pipe cannot take yet waits in
    ``unsent`` until :meth:`flush` (the parent gives a worker its next input while the worker
    may be writing a result; were both to wait for the other to read, neither would)."""

    def __init__(self, incoming: int, outgoing: int) -> None:
        self.incoming, self.outgoing = incoming, outgoing
        self.unsent: deque[memoryview] = deque()

    def fileno(self) -> int:
        return self.incoming

    def send(self, message: Any) -> None:
        data = dumps(message, -1)  # the highest protocol
        self.unsent.append(memoryview(len(data).to_bytes(8, "little") + data))
        self.flush()

    def flush(self) -> None:
        """Writes what the pipe takes of the messages not yet sent (all of them, blocking)."""
        while self.unsent:
            try:
                written = os.write(self.outgoing, self.unsent[0])
            except BlockingIOError:
                return
            if written == len(self.unsent[0]):
                self.unsent.popleft()
            else:
                self.unsent[0] = self.unsent[0][written:]

    def recv(self) -> Any:
        return loads(self._read(int.from_bytes(self._read(8), "little")))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.incoming, min(size, MIB))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def poll(self) -> bool:
        return bool(_ready([self], 0.0))

    def close(self) -> None:
        """Closes both ends, once: a descriptor's number is reused as soon as it is closed."""
        for end in (self.incoming, self.outgoing):
            if end >= 0:
                with contextlib.suppress(OSError):
                    os.close(end)
        self.incoming = self.outgoing = -1
        self.unsent.clear()


_LONGEST_POLL = 2**31 - 1  # milliseconds: poll's limit (a limit past it is a wait for a result)


def _ready(pipes: Sequence[_Pipes], timeout: float) -> list[_Pipes]:
    """The pipes with something to read (a message, or the end of a dead worker's), waiting
    at most ``timeout`` seconds for one, or for room in a pipe that has messages to send
    (sent meanwhile, as far as they fit)."""
    poller = select.poll()
    for pipe in pipes:
        poller.register(pipe.fileno(), select.POLLIN)
        if pipe.unsent:
            poller.register(pipe.outgoing, select.POLLOUT)
    ready = {fd for fd, _ in poller.poll(min(math.ceil(timeout * 1000), _LONGEST_POLL))}
    for pipe in pipes:
        if pipe.unsent and pipe.outgoing in ready:
            try:
                pipe.flush()
            except OSError:  # the worker died: the end of its other pipe says so
                pipe.unsent.clear()
    return [pipe for pipe in pipes if pipe.fileno() in ready]


def _serve(connection: Connection, work: Callable[[Any], Any]) -> None:
    """A worker's loop: one input at a time, until told to stop or memory runs out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    if hasattr(signal, "pthread_sigmask"):  # held back while it was forked (see _sigint_held)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    gc.set_threshold(50_000, 20, 100)  # syntax trees are many small objects, rarely cycles
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        index, item, memory = message
        _limit_memory(memory)
        try:
            result: Any = work(item)
        except MemoryError:
            failure = Failure(f"the analysis ran out of memory (limit {memory // MIB} MiB)")
            connection.send((index, failure, False))
            return  # a fresh worker takes the next input
        except RecursionError:
            result = Failure("the file nests too deeply to analyse")
        except Exception as error:  # an internal error: this input only
            import traceback

            where = traceback.extract_tb(error.__traceback__)[-1]
            result = Failure(f"internal error in clipcheck ({type(error).__name__}: {error}, at "
                             f"{os.path.basename(where.filename)}:{where.lineno}); please report it")
        connection.send((index, result, True))


# Fork where it is safe: macOS's system libraries may not survive a fork, Windows has none.
FORKS = hasattr(os, "fork") and sys.platform != "darwin"


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Ctrl-C held back while a worker is started and recorded: it then reaches this process
    only once the worker is among those stopped on the way out, and the worker starts with it
    held, until it ignores it (before, it would die printing a traceback)."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# This process's ends of every forked worker's pipes: a new worker closes its copies, so that
# nothing but a worker holds the writing end of its output pipe (its death ends the pipe).
_PARENT_ENDS: set[int] = set()


class _Forked:
    """A worker forked from this process, and its pipes."""

    def __init__(self, work: Callable[[Any], Any]) -> None:
        opened: list[int] = []
        try:
            from_parent, to_worker = os.pipe()  # (reading end, writing end)
            opened += (from_parent, to_worker)
            from_worker, to_parent = os.pipe()
            opened += (from_worker, to_parent)
            pid = os.fork()
        except BaseException:  # the system refuses a pipe or a process: nothing left open
            for end in opened:
                os.close(end)
            raise
        if pid == 0:  # the worker: it only ever leaves through os._exit
            code = 1
            try:
                for end in (*_PARENT_ENDS, to_worker, from_worker):
                    os.close(end)
                _serve(_Pipes(from_parent, to_parent), work)
                code = 0
            finally:
                os._exit(code)
        os.close(from_parent)
        os.close(to_parent)
        os.set_blocking(to_worker, False)  # see _Pipes
        self.pid = pid
        self.connection = _Pipes(from_worker, to_worker)
        self.sentinel = None  # none needed: a dead worker's pipe reads its end
        _PARENT_ENDS.update((from_worker, to_worker))
        self.exitcode: int | None = None  # None once reaped: a status the system kept to itself
        self.reaped = False

    def is_alive(self) -> bool:
        self._reap(block=False)
        return not self.reaped

    def kill(self) -> None:
        if not self.reaped:  # a reaped worker's process number may belong to another process
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def join(self) -> None:
        self._reap(block=True)

    def _reap(self, block: bool) -> None:
        if self.reaped:
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # SIGCHLD ignored: the system reaped it, status unknown
            self.reaped = True
            return
        if pid:
            self.reaped = True
            self.exitcode = os.waitstatus_to_exitcode(status)  # -N: killed by signal N

    def close(self) -> None:
        _PARENT_ENDS.difference_update((self.connection.incoming, self.connection.outgoing))
        self.connection.close()


class _Spawned:
    """A worker multiprocessing started (where this process may not fork)."""

    def __init__(self, work: Callable[[Any], Any]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, work), daemon=True)
        self.process.start()
        child.close()
        self.sentinel = self.process.sentinel

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()

    def join(self) -> None:
        self.process.join()

    def close(self) -> None:
        self.connection.close()


def _wait(waitables: list[Any], timeout: float) -> list[Any]:
    """What is ready among the workers' pipes (and, for spawned ones, their processes)."""
    if FORKS:
        return _ready(waitables, timeout)
    import multiprocessing.connection

    return multiprocessing.connection.wait(waitables, timeout)


# Inputs a worker holds at once: the one in work and, where the parent's writes cannot block
# (forked workers' pipes), a next one, so that it never waits for the parent between two.
DEPTH = 2 if FORKS else 1
# The largest input that waits in a worker's pipe behind another's: one that costs little, so
# that no worker sits idle long while another holds an input it has not started.
QUEUED_SIZE = 64 << 10


class _Worker:
    def __init__(self, work: Callable[[Any], Any]) -> None:
        gc.freeze()  # the parent's objects stay shared with the fork, never scanned there
        self.process = _Forked(work) if FORKS else _Spawned(work)
        self.connection: Connection = self.process.connection
        self.given: deque[tuple[int, float]] = deque()  # (input, seconds allowed); the first in work
        # When the input in work runs out of time; ``None`` until all of it has reached the
        # worker (a large one may wait in the pipe while the parent reads the next file).
        self.deadline: float | None = None

    def give(self, index: int, item: object, seconds: float, memory: int) -> None:
        self.given.append((index, seconds))
        self.connection.send((index, item, memory))
        self.start_clock()

    def finished(self) -> int:
        """The input in work, now done: the next one given starts."""
        index, _ = self.given.popleft()
        self.deadline = None
        self.start_clock()
        return index

    def start_clock(self) -> None:
        """The input in work is timed from when all of it has been sent."""
        unsent = len(getattr(self.connection, "unsent", ()))  # messages, the last ones given
        if self.given and self.deadline is None and unsent < len(self.given):
            self.deadline = time.monotonic() + self.given[0][1]

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.process.close()

    def death(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "the analysis stopped unexpectedly"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the analysis crashed ({name})"
        return f"the analysis stopped unexpectedly (exit status {code})"


class Pool(Generic[T, R]):
    """Runs ``work`` over inputs in ``jobs`` worker processes under ``limits``."""

    def __init__(self, work: Callable[[T], R], jobs: int, limits: Limits,
                 size: Callable[[T], int] = lambda item: 0) -> None:
        self.work, self.jobs, self.limits, self.size = work, max(1, jobs), limits, size

    def map(self, items: Iterable[T], progress: Progress | None = None) -> list[R | Failure]:
        """Each input's result (or why it has none), in the inputs' order; ``progress`` is told
        after each one (of the inputs taken so far). Inputs are taken from ``items`` while the
        workers work, so that the first start before the last are found. Whatever ends it
        (Ctrl-C included), no worker outlives it."""
        inputs: list[T] = []
        results: dict[int, R | Failure] = {}

        def done(index: int, outcome: R | Failure) -> None:
            results[index] = outcome
            if progress is not None:
                progress(len(results), len(inputs))

        # The largest last, to be given first, so that no worker is left with a large input
        # at the end: (size, index).
        pending: list[tuple[int, int]] = []
        remaining = iter(items)
        taking = True  # until ``items`` is exhausted
        workers: list[_Worker] = []
        lost = 0  # workers found dead before their input: the system refuses them
        try:
            while True:
                if taking:
                    taking = self._take(remaining, inputs, pending)
                for worker in [w for w in workers if not w.given and not w.process.is_alive()]:
                    worker.stop()  # died idle: its pipes closed, another starts if needed
                    workers.remove(worker)
                lost = self._give(inputs, pending, workers, lost)
                busy = [w for w in workers if w.given]
                if lost > 3 * self.jobs:
                    for _, index in pending:
                        done(index, Failure("no worker process could be started"))
                    pending.clear()
                if not busy:
                    if pending or taking:
                        continue
                    break
                # While inputs are still being taken, only a look at what is ready.
                # (A worker whose input is not all sent yet has no deadline: room in its pipe wakes.)
                now = time.monotonic()
                deadlines = [w.deadline for w in busy if w.deadline is not None]
                timeout = 0.0 if taking else max(0.0, min(deadlines, default=now + _LONGEST_POLL / 1e3) - now)
                ready = _wait([waitable for w in busy for waitable in (w.connection, w.process.sentinel)
                               if waitable is not None], timeout)
                for worker in busy:
                    worker.start_clock()
                    outcome = _outcome(worker, ready)
                    if outcome is None:
                        continue
                    index, result, ended = outcome
                    done(index, result)
                    if ended:  # what else it held never started: another worker takes it
                        for held, _ in worker.given:
                            bisect.insort(pending, (self.size(inputs[held]), held))
                        worker.given.clear()
                        worker.stop()
                        workers.remove(worker)
        finally:
            for worker in workers:
                with contextlib.suppress(OSError):
                    worker.connection.send(None)
                worker.stop()
        return [results[i] for i in range(len(inputs))]

    def _take(self, remaining: Iterator[T], inputs: list[T], pending: list[tuple[int, int]]) -> bool:
        """One more input, if there is one, among those pending (where its size puts it)."""
        for item in remaining:
            inputs.append(item)
            bisect.insort(pending, (self.size(item), len(inputs) - 1))
            return True
        return False

    def _give(self, inputs: list[T], pending: list[tuple[int, int]], workers: list[_Worker],
              lost: int) -> int:
        """Pending inputs given to the idle workers, to new ones while there are fewer than
        ``jobs``, then to those with room for a next one. Returns how many workers could not
        be started or were found dead before their input, in all."""
        while pending:
            room = [w for w in workers if not w.given]
            if not room and len(workers) < self.jobs and lost <= 3 * self.jobs:
                try:
                    with _sigint_held():
                        workers.append(_Worker(self.work))
                except OSError:  # the system refuses another process now
                    lost += 1
                continue
            if room:  # the largest input to each idle worker
                chosen = [(worker, pending.pop()) for worker in room[:len(pending)]]
            else:  # a small one to wait behind another's
                room = [w for w in workers if len(w.given) < DEPTH]
                if not room or pending[0][0] > QUEUED_SIZE:
                    return lost
                chosen = [(room[0], pending.pop(0))]
            for worker, (size, index) in chosen:
                limits = self.limits.time_for(size), self.limits.memory_for(size)
                try:
                    worker.give(index, inputs[index], *limits)
                except OSError:  # it died: when idle, its input goes to another worker
                    if len(worker.given) == 1:  # (when busy, its death says what it held)
                        worker.given.clear()
                        bisect.insort(pending, (size, index))
                        worker.stop()
                        workers.remove(worker)
                        lost += 1
        return lost


def _outcome(worker: _Worker, ready: list[Any]) -> tuple[int, Any, bool] | None:
    """A busy worker's input in work and its result once it has one, or a failure when it died
    or ran out of time, and whether the worker has ended; ``None`` while it works."""
    if worker.connection in ready:
        try:
            _, result, going_on = worker.connection.recv()
        except (EOFError, OSError):
            worker.process.join()
            return worker.finished(), Failure(worker.death()), True
        if not going_on:
            worker.process.join()
        return worker.finished(), result, not going_on
    if worker.process.sentinel is not None and worker.process.sentinel in ready:
        worker.process.join()
        return worker.finished(), Failure(worker.death()), True
    if worker.deadline is not None and time.monotonic() >= worker.deadline and not worker.connection.poll():
        limit = worker.given[0][1]
        worker.stop()
        return worker.finished(), Failure(f"the analysis took longer than its limit of {limit:.0f} s"), True
    return None
