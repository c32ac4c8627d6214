"""The `blip2-jobs` command line: model commands (run BLIP-2 directly) and service commands.

blip2-jobs caption photo.jpg --model tiny-opt
blip2-jobs api --port 8000
blip2-jobs keys create --tenant acme
blip2-jobs tenants set acme --weight 2
blip2-jobs tenants webhook acme https://hooks.acme.example/blip2
blip2-jobs usage --tenant acme
blip2-jobs submit caption photos/*.jpg --server http://127.0.0.1:8000 --key b2j_... --wait
"""

import typer

from cli import key_commands, model_commands, service_commands, submit_commands, tenant_commands, webhook_commands

app = typer.Typer(
    name="blip2-jobs",
    help="BLIP-2 as a service: run the model directly, or the API, workers and dashboard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_commands.register(app)
service_commands.register(app)
key_commands.register(app)
submit_commands.register(app)
tenant_commands.register(app)
webhook_commands.add_commands(tenant_commands.tenants)  # `tenants webhook|webhook-secret` beside `tenants set|list`
