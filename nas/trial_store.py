"""`TrialStore`: where a search's trials and Pareto front are kept (the contract is the class
docstring), and `MemoryTrialStore`, the in-memory implementation for library use and tests.

Every implementation passes one conformance suite, `tests/services/test_store_conformance.py`, run
on the in-memory store, SQLite and PostgreSQL.
"""

from __future__ import annotations

import abc
import copy
import threading
from collections.abc import Iterable

from nas._trial import Trial, TrialState


class DuplicateTrialError(KeyError):
    """A trial with this (search id, number) is already stored."""


class TrialStore(abc.ABC):
    """Storage of the finished trials of searches and of each search's Pareto front.

    Trials are keyed by (search id, number). Numbers count from 0 without gaps in the order the
    runner recorded the trials, also across restarts; a trial is stored once it has finished
    (complete or failed), never while it runs: an evaluation in flight exists only in the runner,
    and one lost with its process is evaluated again by the runner that resumes the search.

    Who writes: while a runner (`nas.runner.Runner`) runs a search it is the only writer of that
    search's trials and front; it calls `add` for each finished trial, in number order, and then
    `set_pareto` when the trial joined the front, and, on resume, reads `trials` once before it
    adds anything. Everyone else (the API, the dashboard, the CLI) only reads. Making sure that a
    search has one runner is the caller's business (the service's scheduler holds a lease per
    search): a store that finds it no longer owns the search may raise `nas.runner.RunAbandoned`
    from a write (writing nothing), and the runner then ends the run at once.

    Thread-safety: implementations are safe to call from several threads of one process (the runner
    writes from its thread while request handlers read). A write is atomic: it happens completely
    or not at all.

    Reads return copies: a trial reads back equal to what was added (floats exactly, `config` and
    `metrics` as the same JSON), and changing a returned trial changes nothing stored.
    """

    @abc.abstractmethod
    def add(self, search_id: str, trial: Trial) -> None:
        """Store `trial` (a finished trial: complete or failed) under (`search_id`, `trial.number`).

        Called by the runner once per finished trial, before it tells the strategy. Raises
        `DuplicateTrialError` and changes nothing when that key is already stored, so a resumed
        runner can never record a trial twice. Implementations may refuse a search they do not know
        (the SQL store needs the search's row) or no longer own (`RunAbandoned`).
        """

    @abc.abstractmethod
    def trials(
        self,
        search_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: TrialState | None = None,
    ) -> list[Trial]:
        """The trials of `search_id` ordered by number: only those in `state` when given, then
        `offset` of them skipped and at most `limit` returned (all when None).

        An unknown search has no trials (`[]`), not an error. The runner reads every trial of a
        search once when it resumes it; readers page through them.
        """

    @abc.abstractmethod
    def count(self, search_id: str, *, state: TrialState | None = None) -> int:
        """How many trials `search_id` has (in `state` when given); 0 for an unknown search."""

    @abc.abstractmethod
    def set_pareto(self, search_id: str, numbers: Iterable[int]) -> None:
        """Make the trials `numbers` the whole front of `search_id`, replacing the previous front.

        Called by the runner whenever a recorded trial joins the front, and once on resume. Numbers
        of trials that are not stored are ignored by `pareto`.
        """

    @abc.abstractmethod
    def pareto(self, search_id: str) -> list[Trial]:
        """The stored trials on the front of `search_id`, ordered by number (`[]` when none)."""

    def get(self, search_id: str, number: int) -> Trial | None:
        """The trial `number` of `search_id`, or None.

        The default reads `trials(offset=number, limit=1)`, which finds it because numbers have no
        gaps; implementations with a keyed lookup override it.
        """
        found = self.trials(search_id, offset=number, limit=1)
        return found[0] if found and found[0].number == number else None


class MemoryTrialStore(TrialStore):
    """A `TrialStore` in dicts (library use, tests)."""

    def __init__(self) -> None:
        self._trials: dict[str, dict[int, Trial]] = {}
        self._front: dict[str, set[int]] = {}
        self._lock = threading.Lock()

    def add(self, search_id: str, trial: Trial) -> None:
        with self._lock:
            bucket = self._trials.setdefault(search_id, {})
            if trial.number in bucket:
                raise DuplicateTrialError(f"trial {trial.number} of search {search_id} is already stored")
            bucket[trial.number] = copy.deepcopy(trial)

    def trials(
        self,
        search_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: TrialState | None = None,
    ) -> list[Trial]:
        with self._lock:
            rows = sorted(self._trials.get(search_id, {}).values(), key=lambda t: t.number)
            if state is not None:
                rows = [t for t in rows if t.state == state]
            end = None if limit is None else offset + limit
            return [copy.deepcopy(t) for t in rows[offset:end]]

    def count(self, search_id: str, *, state: TrialState | None = None) -> int:
        with self._lock:
            rows = self._trials.get(search_id, {}).values()
            return sum(1 for t in rows if state is None or t.state == state)

    def set_pareto(self, search_id: str, numbers: Iterable[int]) -> None:
        with self._lock:
            self._front[search_id] = set(numbers)

    def pareto(self, search_id: str) -> list[Trial]:
        with self._lock:
            bucket = self._trials.get(search_id, {})
            front = sorted(n for n in self._front.get(search_id, set()) if n in bucket)
            return [copy.deepcopy(bucket[n]) for n in front]
