"""`edgekit serve`: run a bundle as an OpenAI-compatible HTTP server. Imports no torch.

May import: stdlib, click, uvicorn, edgekit.core, edgekit.device.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Use 0.0.0.0 explicitly to accept connections from other machines.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0 = any free port).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Runtime intra-op threads (0 = the runtime's default).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log verbosity.")
@click.option("--delegate-library", envvar="EDGEKIT_DELEGATE_LIBRARY", default=None, metavar="PATH",
              help="Delegate library for TFLite bundles (GPU / Edge TPU), overriding the target's default "
                   "[env EDGEKIT_DELEGATE_LIBRARY]. If it cannot be loaded the model runs on the CPU (XNNPACK).")
@click.option("--delegate-option", "delegate_options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the delegate (repeatable). Edge TPU: device=usb, device=usb:0, device=pci:0.")
@click.option("--api-key", envvar="EDGEKIT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health [env EDGEKIT_API_KEY].")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests allowed to wait for the model; more get 503 with Retry-After.")
@click.option("--request-timeout", default=300.0, show_default=True, type=click.FloatRange(0.1, None),
              help="Seconds a request may take (queue wait included); longer generations stop: 504.")
@click.option("--request-log", type=click.Path(path_type=Path), default=None,
              help="JSONL request log (one line per request) [default: $EDGEKIT_HOME/logs/<bundle>-requests.jsonl].")
def serve(bundle, host, port, threads, log_level, delegate_library, delegate_options, api_key, max_queue,
          request_timeout, request_log):
    """Serve a bundle over HTTP with an OpenAI-compatible API.

    \b
    GET  /health               503 while the model loads, 200 when ready (no auth)
    GET  /v1/models            the served model
    GET  /props                bundle, target, runtime, accelerator actually in use, threads, queue
    GET  /metrics              Prometheus text: requests, tokens, latencies, queue depth
    POST /v1/completions       prompt, max_tokens, temperature, top_p, top_k, stop, seed, stream
    POST /v1/chat/completions  messages (chat template from the bundle), same sampling fields
    POST /v1/embeddings        input (feature-extraction bundles), encoding_format
    The bundle is verified (sha256 of every file) before it is loaded. SIGTERM / Ctrl-C finish the
    requests in flight (up to 10 s), flush the request log and exit 0.
    """
    import uvicorn

    from edgekit.core.bundle import load_bundle
    from edgekit.core.paths import edgekit_home
    from edgekit.device.runtime import open_model, runner_for
    from edgekit.device.server import create_app
    from edgekit.device.serving import RequestLog

    options = {}
    for item in delegate_options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--delegate-option")
        options[key] = value
    b = load_bundle(bundle)  # sha256 of every file, before anything listens
    runner_for(b)  # unknown task/runtime: one clear error now, not a 503 later
    name = b.manifest["name"]
    log_path = request_log or edgekit_home() / "logs" / f"{name}-requests.jsonl"

    def loader():
        loaded = open_model(b, threads=threads, delegate_library=delegate_library, delegate_options=options or None)
        click.echo(f"edgekit serve: {name} ready ({b.manifest['model']['precision']}, "
                   f"{b.manifest['model']['runtime']} on {loaded.accelerator})", err=True)
        return loaded

    click.echo(f"edgekit serve: {name} on http://{host}:{port} (loading; request log {log_path})", err=True)
    app = create_app(loader=loader, api_key=api_key, max_queue=max_queue, request_log=RequestLog(log_path),
                     request_timeout=request_timeout)
    import signal

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handlers it
    # found; these no-op handlers make that a normal exit (status 0) after the log is flushed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    click.echo("edgekit serve: stopped", err=True)
