"""The fault suite's figures for the README: faults injected, jobs run through them, jobs lost and
jobs run or recorded twice, counted across the whole test session and printed once at its end.

    from tests.support.fault_tally import tally

    tally.fault("sigkill_worker")   # one fault injected (a kind name of your choosing)
    tally.jobs(3)                   # jobs submitted while faults were injected
    tally.lost(0)                   # jobs that never finished, or finished in the wrong state
    tally.duplicated(0)             # jobs with a second run or a second result
    tally.note("worker RSS 470 -> 470 MB over 500 failing jobs")  # a figure, printed under the line

Record lost and duplicated jobs before asserting on them, so a failing run still prints its figures.
tests/conftest.py prints `tally.summary()` at the end of the run when any fault test ran.
"""

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultTally:
    """Counts for one test session (the process-wide `tally` below)."""

    faults_by_kind: Counter[str] = field(default_factory=Counter)
    jobs_submitted: int = 0
    jobs_lost: int = 0
    jobs_duplicated: int = 0
    notes: list[str] = field(default_factory=list)

    def fault(self, kind: str, count: int = 1) -> None:
        self.faults_by_kind[kind] += count

    def jobs(self, count: int = 1) -> None:
        self.jobs_submitted += count

    def lost(self, count: int = 1) -> None:
        self.jobs_lost += count

    def duplicated(self, count: int = 1) -> None:
        self.jobs_duplicated += count

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults_by_kind.values())

    def summary(self) -> str | None:
        """One line of figures (then the notes, one a line), or None when no fault test ran."""
        if not self.faults_injected and not self.jobs_submitted:
            return None
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults_by_kind.items()))
        line = (
            f"fault suite: {self.faults_injected} faults injected, {self.jobs_submitted} jobs, "
            f"{self.jobs_lost} lost, {self.jobs_duplicated} duplicated ({kinds})"
        )
        return "\n".join([line, *(f"  {note}" for note in self.notes)])


tally = FaultTally()
