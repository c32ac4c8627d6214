"""`blip2-jobs tenants webhook|webhook-secret`: a tenant's default webhook and its signing secret.

blip2-jobs tenants webhook acme https://hooks.acme.example/blip2   # jobs naming no webhook_url go there
blip2-jobs tenants webhook acme --clear                             # no default any more
blip2-jobs tenants webhook-secret acme [--rotate]                   # the whsec_... receivers verify with

Setting a webhook or asking for the secret prints the tenant's signing secret alone on stdout (for
scripts); every command says what it did on stderr.
"""

from typing import Annotated

import typer

from cli.service_commands import database_sessions, one_line_errors, settings_from_environment

TenantArgument = Annotated[str, typer.Argument(help="The tenant, as its API keys name it.")]


def add_commands(tenants: typer.Typer) -> None:
    """Attach the webhook commands to the `tenants` group."""
    tenants.command()(webhook)
    tenants.command("webhook-secret")(webhook_secret)


def webhook(
    tenant: TenantArgument,
    url: Annotated[
        str | None, typer.Argument(help="Where the tenant's jobs are delivered when they name none.")
    ] = None,
    clear: Annotated[bool, typer.Option(help="Remove the tenant's default webhook.")] = False,
) -> None:
    """Set (or --clear) the URL a tenant's finished jobs are POSTed to when they name no webhook_url."""
    from jobs.api_keys import check_tenant
    from jobs.db import session_scope
    from jobs.webhooks import check_webhook_url, set_default_url

    if (url is None) == (not clear):
        raise typer.BadParameter("give a URL, or --clear")
    with one_line_errors():
        settings = settings_from_environment()
        checked = None if url is None else check_webhook_url(url, settings.fetch_allowed_hosts, field="url")
        with database_sessions() as sessions, session_scope(sessions) as session:
            secret = set_default_url(session, check_tenant(tenant), checked)
    if checked is not None:  # the secret its deliveries are signed with (`webhook-secret` prints it too)
        typer.echo(secret)
    typer.echo(f"default webhook of tenant {tenant}: {checked or 'none'}", err=True)


def webhook_secret(
    tenant: TenantArgument,
    rotate: Annotated[bool, typer.Option(help="Make a new secret; deliveries from now on are signed with it.")] = False,
) -> None:
    """Print the tenant's webhook signing secret (made now if it has none)."""
    from jobs.api_keys import check_tenant
    from jobs.db import session_scope
    from jobs.webhooks import ensure_secret, rotate_secret

    with one_line_errors(), database_sessions() as sessions, session_scope(sessions) as session:
        secret = (rotate_secret if rotate else ensure_secret)(session, check_tenant(tenant))
    typer.echo(secret)
    typer.echo(f"{'new ' if rotate else ''}webhook signing secret of tenant {tenant}", err=True)
