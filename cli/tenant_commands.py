"""`blip2-jobs tenants set|list` and `blip2-jobs usage`: tenants' fair-share weights and their usage,
against the database DATABASE_URL names (unset: the embedded PostgreSQL, as for `keys`).

blip2-jobs tenants set acme --weight 2      # twice the share of a tenant of weight 1 on every queue
blip2-jobs tenants list
blip2-jobs usage --tenant acme --from 2026-11-01 --to 2026-12-01 [--json]
"""

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from cli.service_commands import database_sessions, one_line_errors

if TYPE_CHECKING:
    from jobs.schemas import UsagePublic

tenants = typer.Typer(help="Tenants' weights in the fair share of the workers.", no_args_is_help=True)
MAX_WEIGHT = 1000


def register(app: typer.Typer) -> None:
    app.add_typer(tenants, name="tenants")
    app.command()(usage)


@tenants.command("set")
def set_(
    tenant: Annotated[str, typer.Argument(help="The tenant, as its API keys name it.")],
    weight: Annotated[int, typer.Option(min=1, max=MAX_WEIGHT, help="Its share of every queue against weight 1.")],
) -> None:
    """Set a tenant's weight: while tenants both have jobs queued for a model, each gets rows in proportion."""
    from jobs.api_keys import check_tenant
    from jobs.db import session_scope
    from jobs.fair_share import set_tenant_weight

    with one_line_errors(), database_sessions() as sessions, session_scope(sessions) as session:
        row = set_tenant_weight(session, check_tenant(tenant), weight)
    typer.echo(f"tenant {row.name}: weight {row.weight}")


@tenants.command("list")
def list_() -> None:
    """Tenants with a weight of their own (every other tenant weighs 1)."""
    from jobs.fair_share import list_tenants

    with one_line_errors(), database_sessions() as sessions, sessions() as session:
        rows = list_tenants(session)
    typer.echo("tenant\tweight")
    for row in rows:
        typer.echo(f"{row.name}\t{row.weight}")


def usage(
    tenant: Annotated[str, typer.Option(help="The tenant whose usage to show.")],
    start: Annotated[str | None, typer.Option("--from", help="Start of the window (ISO 8601; UTC if no zone).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End of the window, exclusive.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print GET /v1/usage's JSON document.")] = False,
) -> None:
    """A tenant's jobs by kind and status, images stored and worker-seconds by model, as GET /v1/usage gives them."""
    from jobs.api_keys import check_tenant
    from jobs.usage import UsageWindow, tenant_usage

    with one_line_errors():
        window = UsageWindow(_moment(start, "--from"), _moment(end, "--to"))
        with database_sessions() as sessions, sessions() as session:
            report = tenant_usage(session, check_tenant(tenant), window)
    typer.echo(report.model_dump_json(by_alias=True, indent=2) if as_json else _text(report))


def _moment(value: str | None, option: str) -> datetime | None:
    from jobs.errors import InvalidTimeRange

    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidTimeRange(f"{option} {value!r} is not an ISO 8601 date or time", field=option) from exc


def _text(report: "UsagePublic") -> str:
    start = report.from_.isoformat() if report.from_ else "the beginning"
    end = report.to.isoformat() if report.to else "now"
    lines = [f"tenant {report.tenant}, from {start} until {end}", "jobs (submitted)"]
    lines += [f"  {row.kind.value}\t{row.status.value}\t{row.count}" for row in report.jobs] or ["  none"]
    lines.append(f"images stored\t{report.images.count}\t{report.images.bytes} bytes")
    lines.append("worker-seconds by model (jobs finished)")
    lines += [f"  {row.model}\t{row.worker_seconds:.3f}\t{row.jobs} jobs" for row in report.models] or ["  none"]
    lines.append(f"worker-seconds in all\t{report.worker_seconds:.3f}")
    return "\n".join(lines)
