"""The `blip2-jobs` command line: model commands (run BLIP-2 directly) and service commands.

blip2-jobs caption photo.jpg --model tiny-opt
blip2-jobs api --port 8000
blip2-jobs keys create --tenant acme
blip2-jobs tenants set acme --weight 2
blip2-jobs usage --tenant acme
"""

import typer

from cli import key_commands, model_commands, service_commands, tenant_commands

app = typer.Typer(
    name="blip2-jobs",
    help="BLIP-2 as a service: run the model directly, or the API, workers and dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_commands.register(app)
service_commands.register(app)
key_commands.register(app)
tenant_commands.register(app)
