"""`TrialStore`: where a search's trials and Pareto front are kept.

Contract (every implementation passes `tests/services/test_store_conformance.py`, run on the in-memory
store, SQLite and PostgreSQL):
- trials are keyed by (search id, number); `add` of an existing key raises `DuplicateTrialError`
  and changes nothing, so a resumed runner can never record a trial twice;
- `trials` returns them ordered by number, paginated by `offset`/`limit`, optionally by state;
- `set_pareto` replaces the set of front members of a search; `pareto` returns those trials ordered
  by number;
- a trial reads back equal to what was added (floats exactly, config and metrics as the same JSON);
- implementations are safe to call from several threads of one process.
The runner is the only writer of a search's trials while it runs the search.
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
    """Storage of trials and fronts; see the module docstring for the contract."""

    @abc.abstractmethod
    def add(self, search_id: str, trial: Trial) -> None: ...

    @abc.abstractmethod
    def trials(
        self,
        search_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: TrialState | None = None,
    ) -> list[Trial]: ...

    @abc.abstractmethod
    def count(self, search_id: str, *, state: TrialState | None = None) -> int: ...

    @abc.abstractmethod
    def set_pareto(self, search_id: str, numbers: Iterable[int]) -> None: ...

    @abc.abstractmethod
    def pareto(self, search_id: str) -> list[Trial]: ...

    def get(self, search_id: str, number: int) -> Trial | None:
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
