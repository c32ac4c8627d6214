"""Start-time fair queuing across the tenants of one queue: whose job a claim takes next.

Each queue keeps a virtual time (`queue_clocks`), and each tenant on it the virtual time at which
its next job starts (`queue_shares.virtual_finish`, where its last job's share of service ended). A
waiting job's start tag is the later of the two, so a tenant that was idle starts at the queue's
current time: idleness earns no burst of credit. A claim repeatedly takes the job with the smallest
start tag (ties: the older job), charges its tenant `cost / weight` of virtual time (cost: the rows
the job takes in a batch), and finally moves the queue's clock to the largest start tag it took.

While two tenants both have work queued, each therefore gets rows in proportion to its weight
(`tenants.weight`, 1 without a row), whoever queued first and however many they queued; a tenant
alone on a queue gets all of it. The state is two small rows per claim, updated in the claim's own
transaction, so it is exactly as durable as the claim: a rolled-back claim charges nobody.

    share = lock_fair_share(session, queue)   # serialises the claims of this queue
    share.load(session, tenants)
    taken = share.take(waiting_by_tenant, room, cost)
    save_fair_share(session, share)
"""

from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import Float, Select, String, Update, and_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import TableValuedAlias

from jobs.models import Job, QueueClock, QueueShare, Tenant


@dataclass
class FairShare:
    """One queue's fair-share state, as a claim reads and changes it."""

    queue: str
    clock: float  # the queue's virtual time when the claim began
    finish: dict[str, float] = field(default_factory=dict)  # per tenant: where its next job starts
    weights: dict[str, int] = field(default_factory=dict)  # per tenant; 1 when absent
    charged: set[str] = field(default_factory=set)  # tenants whose finish this claim moved
    last_start: float | None = None  # the largest start tag taken, the queue's clock after the claim
    loaded: dict[str, float] = field(default_factory=dict)  # `finish` as read, before any charge

    def start(self, tenant: str) -> float:
        """The start tag of the tenant's next job: never before the queue's clock (no credit for idling)."""
        return max(self.clock, self.finish.get(tenant, self.clock))

    def charge(self, job: Job, cost: int) -> None:
        """Account for `job` taking `cost` rows of service."""
        start = self.start(job.tenant)
        self.finish[job.tenant] = start + max(cost, 1) / self.weights.get(job.tenant, 1)
        self.charged.add(job.tenant)
        self.last_start = start if self.last_start is None else max(self.last_start, start)

    def take(self, waiting: Mapping[str, Sequence[Job]], room: int, cost: Callable[[Job], int]) -> list[Job]:
        """Up to `room` of the waiting jobs (each tenant's in its own order) in fair order, charged."""
        lines = {tenant: deque(jobs) for tenant, jobs in waiting.items() if jobs}
        taken: list[Job] = []
        while lines and len(taken) < room:
            tenant = min(lines, key=lambda t: (self.start(t), lines[t][0].created_at, lines[t][0].id))
            job = lines[tenant].popleft()
            self.charge(job, cost(job))
            taken.append(job)
            if not lines[tenant]:
                del lines[tenant]
        return taken

    def recharge(self, jobs: Sequence[Job], cost: Callable[[Job], int]) -> None:
        """Undo this claim's charges and charge `jobs` instead, in their order: the jobs it did take,
        when some of those chosen were gone by the time it claimed them."""
        self.finish = dict(self.loaded)
        self.charged = set()
        self.last_start = None
        for job in jobs:
            self.charge(job, cost(job))

    def load(self, session: Session, tenants: Collection[str]) -> None:
        """Read the tenants' places in this queue and their weights (one query)."""
        if not tenants:
            return
        params = {"share_queue": self.queue, "tenants": list(tenants)}
        for tenant, finish, weight in session.execute(_load_statement(), params):
            if finish is not None:
                self.finish[tenant] = finish
            if weight is not None:
                self.weights[tenant] = weight
        self.loaded = dict(self.finish)


def lock_fair_share(session: Session, queue: str) -> FairShare:
    """The queue's fair-share state, its clock row locked until the transaction ends.

    Every claim on a queue takes this lock first (and only then the job rows it takes, and the
    queue's share rows), so two workers claiming from one queue take turns for a few milliseconds
    instead of both charging the same virtual time, and can never wait for each other in a cycle.
    """
    clock = session.scalar(_lock_statement(), {"share_queue": queue})
    if clock is None:  # the queue's first claim; a concurrent first claim waits for this row's commit
        session.execute(insert(QueueClock).values(queue=queue, virtual_time=0.0).on_conflict_do_nothing())
        clock = session.scalar(_lock_statement(), {"share_queue": queue})
    return FairShare(queue=queue, clock=float(clock or 0.0))


def save_fair_share(session: Session, share: FairShare) -> None:
    """Write what the claim charged, in one statement: the tenants' new places and the queue's clock."""
    if not share.charged:
        return
    tenants = sorted(share.charged)
    clock = max(share.clock, share.last_start if share.last_start is not None else share.clock)
    finishes = [share.finish[tenant] for tenant in tenants]
    session.execute(
        _save_statement(), {"share_queue": share.queue, "tenants": tenants, "finishes": finishes, "clock": clock}
    )


# Built once, with bound parameters: every claim runs them.


def _queue() -> BindParameter[str]:
    """The queue, bound as `share_queue` (`queue` is a column these statements write)."""
    return bindparam("share_queue", type_=String())


@cache
def _lock_statement() -> Select[float]:
    return select(QueueClock.virtual_time).where(QueueClock.queue == _queue()).with_for_update()


@cache
def _load_statement() -> Select[str, float, int]:
    named = named_tenants()
    return (
        select(named.c.tenant, QueueShare.virtual_finish, Tenant.weight)
        .select_from(named)
        .outerjoin(QueueShare, and_(QueueShare.queue == _queue(), QueueShare.tenant == named.c.tenant))
        .outerjoin(Tenant, Tenant.name == named.c.tenant)
    )


@cache
def _save_statement() -> Update:
    places = (
        func.unnest(bindparam("tenants", type_=ARRAY(String())), bindparam("finishes", type_=ARRAY(Float())))
        .table_valued("tenant", "finish")
        .render_derived()
    )
    upsert = insert(QueueShare).from_select(
        ["queue", "tenant", "virtual_finish"], select(_queue(), places.c.tenant, places.c.finish)
    )
    charged = upsert.on_conflict_do_update(
        index_elements=["queue", "tenant"], set_={"virtual_finish": upsert.excluded.virtual_finish}
    ).cte("charged")
    statement = update(QueueClock).where(QueueClock.queue == _queue()).values(virtual_time=bindparam("clock"))
    return statement.add_cte(charged)


def named_tenants() -> TableValuedAlias:
    """The tenants bound as `tenants` as a table of one column, `tenant`: an array bound as one
    parameter, so the statement is compiled once however many tenants it names."""
    return func.unnest(bindparam("tenants", type_=ARRAY(String()))).table_valued("tenant").render_derived()


# ---- tenants' weights -------------------------------------------------------------------------


def set_tenant_weight(session: Session, tenant: str, weight: int) -> Tenant:
    """Set a tenant's weight in the fair share of every queue (its row is made on first use)."""
    statement = insert(Tenant).values(name=tenant, weight=weight)
    statement = statement.on_conflict_do_update(index_elements=["name"], set_={"weight": weight})
    return session.scalars(statement.returning(Tenant).execution_options(populate_existing=True)).one()


def list_tenants(session: Session) -> list[Tenant]:
    """Tenants with settings of their own, by name (every other tenant weighs 1)."""
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))
