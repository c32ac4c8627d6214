"""`blip2-jobs keys create|list|revoke`: API keys, against the database DATABASE_URL names (unset:
the embedded PostgreSQL under BLIP2_DATA_DIR, the one `blip2-jobs up` runs).

blip2-jobs keys create --tenant acme --name ci     # prints the key, once
blip2-jobs keys list [--tenant acme]
blip2-jobs keys revoke b2j_AbCdEfGh                # by the shown prefix or the key's id
"""

from typing import Annotated

import typer

from cli.service_commands import database_sessions, one_line_errors

keys = typer.Typer(help="Create, list and revoke API keys (only a hash of each key is stored).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys, name="keys")


@keys.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for: its jobs, images, datasets, models.")],
    name: Annotated[str, typer.Option(help="A label, to tell keys apart in `keys list`.")] = "",
) -> None:
    """Create a key and print it; it is shown this once and cannot be recovered."""
    from jobs.api_keys import create_key
    from jobs.db import session_scope

    with one_line_errors(), database_sessions() as sessions, session_scope(sessions) as session:
        created = create_key(session, tenant=tenant, name=name)
    typer.echo(created.secret)
    typer.echo(f"created key {created.row.prefix}… (id {created.row.id}) for tenant {tenant}", err=True)


@keys.command("list")
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """Every key: id, tenant, shown prefix, name, created, revoked."""
    from jobs.api_keys import list_keys

    with one_line_errors(), database_sessions() as sessions, sessions() as session:
        rows = list_keys(session, tenant)
    typer.echo("id\ttenant\tprefix\tname\tcreated\trevoked")
    for row in rows:
        revoked = row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "-"
        created = row.created_at.isoformat(timespec="seconds")
        typer.echo(f"{row.id}\t{row.tenant}\t{row.prefix}\t{row.name or '-'}\t{created}\t{revoked}")


@keys.command()
def revoke(key: Annotated[str, typer.Argument(help="The key's id, or its prefix as `keys list` shows it.")]) -> None:
    """Revoke a key: from now on it answers 401."""
    from jobs.api_keys import revoke_key
    from jobs.db import session_scope

    with one_line_errors(), database_sessions() as sessions, session_scope(sessions) as session:
        row = revoke_key(session, key)
    typer.echo(f"revoked key {row.prefix}… (id {row.id}) of tenant {row.tenant}")
