"""`edgekit serve`: run a bundle as an OpenAI-compatible HTTP server. Imports no torch.

May import: stdlib, click, uvicorn, edgekit.core, edgekit.device.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.power import pick_source, power_options
from edgekit.cli.sign import signed_line, trust_check, trust_option


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Use 0.0.0.0 explicitly to accept connections from other machines.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0 = any free port).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0, 256),
              help="Runtime threads (0 = the target's runtime.threads, or every CPU when that is 0); always capped "
                   "at the CPUs this process may use. /props shows the count and why.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log verbosity.")
@click.option("--delegate-library", envvar="EDGEKIT_DELEGATE_LIBRARY", default=None, metavar="PATH",
              help="Delegate library for TFLite bundles (GPU / Edge TPU), overriding the target's default "
                   "[env EDGEKIT_DELEGATE_LIBRARY]. If it cannot be loaded, or takes no nodes, serve refuses to "
                   "start unless --allow-cpu-fallback.")
@click.option("--allow-cpu-fallback", is_flag=True,
              help="Serve on the CPU (XNNPACK) when the target's GPU / Edge TPU delegate is missing or takes no "
                   "nodes: one warning line, and /props shows delegation.cpu_fallback = true.")
@click.option("--delegate-option", "delegate_options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the delegate (repeatable). Edge TPU: device=usb, device=usb:0, device=pci:0.")
@click.option("--api-key", envvar="EDGEKIT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every route but /health [env EDGEKIT_API_KEY].")
@click.option("--max-queue", default=8, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests allowed to wait for the model; more get 503 with Retry-After.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64), metavar="N",
              help="Requests generating at once, decoding together in one batched model pass per token (ONNX "
                   "bundles with a batch axis; otherwise 1, and /props parallel.reason says why). Overlapping "
                   "requests split the measured power evenly.")
@click.option("--request-timeout", default=300.0, show_default=True, type=click.FloatRange(0.1, None),
              help="Seconds a request may take (queue wait included); longer generations stop: 504.")
@click.option("--prefix-cache-mib", default=128.0, show_default=True, type=click.FloatRange(0, None),
              help="Memory (MiB) for the KV caches of recent requests, reused when a prompt starts with tokens run "
                   "before (a chat's system prompt and earlier turns; least recently used dropped first). 0 = off.")
@click.option("--prefix-cache-answers", is_flag=True,
              help="Also keep the answers' KV caches, so a chat's next turn reuses the answer it repeats (faster; "
                   "greedy output can then differ where two tokens nearly tie: decode steps round differently).")
@click.option("--request-log", type=click.Path(path_type=Path), default=None,
              help="JSONL request log (one line per request) [default: $EDGEKIT_HOME/logs/<name>-<target>-<precision>-requests.jsonl].")
@power_options
@click.option("--power-log", type=click.Path(path_type=Path), default=None,
              help="JSONL power log (one line per reading) [default: $EDGEKIT_HOME/logs/<name>-<target>-<precision>-power.jsonl].")
@click.option("--power-log-max-mb", default=50.0, show_default=True, type=click.FloatRange(0.01, None),
              help="Rotate the power log past this size (keeps 3 old files).")
@click.option("--subtract-idle", is_flag=True,
              help="Measure idle power for 3 s after loading and subtract it from every request (stated in usage).")
@click.option("--grid-intensity", type=click.FloatRange(0, None), default=None, metavar="G_PER_KWH",
              help="Grid carbon intensity for CO2 figures [default: 475, world average].")
@click.option("--country", default=None, metavar="ISO3", help="Use this country's approximate grid intensity.")
@click.option("--verify", "verify_first", is_flag=True,
              help="Before listening, check the model on this machine's kernels against the bundle's reference data "
                   "(as `edgekit verify`); exit 1 if a check fails, 3 if the bundle has no reference data.")
@click.option("--draft/--no-draft", "draft", default=None,
              help="Speculative decoding with the bundle's draft model (`edgekit build --with-draft`): the draft "
                   "proposes tokens, the model checks them in one pass; same output [default: on when the bundle "
                   "has a draft].")
@click.option("--draft-tokens", default=4, show_default=True, type=click.IntRange(1, 16), metavar="K",
              help="Tokens the draft proposes per verify pass of the model.")
@trust_option
def serve(bundle, host, port, threads, log_level, delegate_library, delegate_options, allow_cpu_fallback, api_key,
          max_queue, parallel, request_timeout, prefix_cache_mib, prefix_cache_answers, request_log, power, power_channels,
          board, power_hz, power_log,
          power_log_max_mb, subtract_idle, grid_intensity, country, verify_first, draft, draft_tokens, trust):
    """Serve a bundle over HTTP with an OpenAI-compatible API.

    \b
    GET  /health               503 while the model loads, 200 when ready (no auth)
    GET  /v1/models            the served model
    GET  /props                bundle, target, runtime, accelerator actually in use (delegation: nodes and
                               segments the GPU / Edge TPU delegate took vs the CPU), threads, queue,
                               generation defaults (each with its source), speculative (draft, k,
                               acceptance rate so far), slots (in use / total) and parallel (--parallel)
    GET  /metrics              Prometheus text: requests, tokens, latencies, queue depth, slots, joules, watts
    POST /v1/completions       prompt, max_tokens, temperature, top_p, top_k, stop, seed, stream,
                               frequency_penalty, presence_penalty (OpenAI), repeat_penalty,
                               repeat_last_n (llama.cpp; prompt in the window)
    POST /v1/chat/completions  messages (chat template from the bundle), same sampling fields
    POST /v1/embeddings        input (feature-extraction bundles), encoding_format
    A prompt that starts with tokens of a recent request reuses their KV cache (--prefix-cache-mib):
    usage.prompt_tokens_details.cached_tokens counts them.
    The bundle is verified (sha256 of every file; with --trust, its signature by a trusted key) before
    it is loaded and before anything listens. SIGTERM / Ctrl-C finish the
    requests in flight (up to 10 s), flush the request log and exit 0.

    Every response's usage carries energy: joules, watts, joules per token, the power source and
    whether it was measured (false for an estimate), and CO2 at the stated grid intensity.
    """
    from edgekit.core.bundle import bundle_log_name, load_bundle
    from edgekit.core.paths import edgekit_home
    from edgekit.device.power.thermal import start_monitor
    from edgekit.device.runtime import runner_for
    from edgekit.device.server import create_app

    options = _delegate_options(delegate_options)
    check = trust_check(trust)
    b = load_bundle(bundle, check=check)  # signature (--trust) and sha256 of every file, before anything listens
    if check is not None:
        _say(signed_line(b, check))
    runner_for(b)  # unknown task/runtime: one clear error now, not a 503 later
    draft = _draft_choice(b, draft)
    logs, stem = edgekit_home() / "logs", bundle_log_name(b.manifest)
    log_path = request_log or logs / f"{stem}-requests.jsonl"
    loader = _loader(b, threads, delegate_library, options, allow_cpu_fallback, prefix_cache_mib,
                     prefix_cache_answers, draft, draft_tokens, parallel)
    if subtract_idle and power == "none":
        raise click.BadParameter("needs a power source; it cannot be used with --power none", param_hint="--subtract-idle")
    request_log_file = _request_log(log_path)
    thermal = start_monitor(say=_say)
    session = _power_session(b, power, list(power_channels), board, power_hz,
                             power_log or logs / f"{stem}-power.jsonl", power_log_max_mb,
                             grid_intensity, country, thermal)
    if session is not None and subtract_idle:
        loader = _with_idle_baseline(loader, session)
    preloaded = _verified(loader, session, thermal) if verify_first else None
    _say(f"{b.manifest['name']} on http://{host}:{port} (loading; request log {log_path})")
    app = create_app(loaded=preloaded, loader=loader, api_key=api_key, max_queue=max_queue,
                     request_log=request_log_file, request_timeout=request_timeout, meter=session and session.meter,
                     intensity=session and session.intensity, thermal=thermal)
    _run(app, host, port, log_level, session, thermal)


def _say(line: str) -> None:
    click.echo(f"edgekit serve: {line}", err=True)


def _delegate_options(items) -> dict:
    """--delegate-option KEY=VALUE items as a dict; anything else is a click error."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--delegate-option")
        options[key] = value
    return options


def _draft_choice(b, draft: bool | None) -> bool:
    """Whether to decode speculatively: --draft / --no-draft, by default when the bundle has a draft; a
    draft the bundle lacks or its runtime cannot use is a one-line error before anything listens."""
    from edgekit.core.errors import BundleError
    from edgekit.device.runtime import check_draft

    if draft is False:
        return False
    try:
        return check_draft(b, required=bool(draft))
    except BundleError as exc:
        raise click.ClickException(str(exc)) from None


def _loader(b, threads, delegate_library, options, allow_cpu_fallback, prefix_cache_mib=0.0,
            prefix_cache_answers=False, draft=False, draft_tokens=4, parallel=1):
    """The function that opens the model (the server calls it in the background). A GPU / Edge TPU bundle
    is opened now, before anything listens: a missing or useless delegate is an error at once. A
    text-generation model gets a prefix cache of `prefix_cache_mib` MiB (0: none), keeping the answers'
    caches too with `prefix_cache_answers`; up to `parallel` requests decode together where the runner can."""
    from edgekit.device.batching import enable_parallel
    from edgekit.device.delegation import DelegateUnusable
    from edgekit.device.prefix_cache import MIB, PrefixCache
    from edgekit.device.runtime import open_model, requests_hardware_delegate

    def open_checked():
        loaded = open_model(b, threads=threads, delegate_library=delegate_library, delegate_options=options or None,
                            allow_cpu_fallback=allow_cpu_fallback,  # an unusable delegate: DelegateUnusable
                            draft=draft, draft_tokens=draft_tokens)
        if prefix_cache_mib > 0 and loaded.task == "text-generation":
            loaded.prefix_cache = PrefixCache(int(prefix_cache_mib * MIB), reuse_answers=prefix_cache_answers)
        enable_parallel(loaded, parallel)
        if loaded.parallel["reason"]:
            _say(f"--parallel {parallel}: serving 1 request at a time: {loaded.parallel['reason']}")
        if loaded.fallback_warning:  # one line: what the delegate took, and that the CPU runs it
            _say(loaded.fallback_warning)
        elif loaded.delegation is not None and loaded.delegation.hardware:
            _say(loaded.delegation.line())
        return loaded

    try:
        early = open_checked() if requests_hardware_delegate(b.manifest) else None
    except DelegateUnusable as exc:
        raise click.ClickException(str(exc)) from None

    def loader():
        loaded = early if early is not None else open_checked()
        _say(f"{b.manifest['name']} ready ({b.manifest['model']['precision']}, "
             f"{b.manifest['model']['runtime']} on {loaded.accelerator}, {loaded.threads} threads: "
             f"{loaded.threads_source})")
        api = getattr(loaded.model, "litert_api", None)
        if api:  # LiteRT: CompiledModel with its XNNPACK weight cache, or the Interpreter and why
            _say(f"litert: {api}")
        if loaded.speculation is not None:
            s = loaded.speculation
            _say(f"speculative decoding: draft {s.name} ({s.layers} layers) proposes {s.k} tokens per pass")
        return loaded

    return loader


def _with_idle_baseline(plain_loader, session):
    """`--subtract-idle`: after loading, measure idle power for 3 s (subtracted from every request)."""
    def loader():
        loaded = plain_loader()
        watts = session.measure_idle(3.0)
        kind = "measured" if session.source.measured else "ESTIMATE"
        _say(f"idle baseline {watts:.3f} W ({session.source.name}, {kind}) is subtracted from every request")
        return loaded

    return loader


def _request_log(path: Path):
    from edgekit.device.jsonl import JsonlLog

    try:
        return JsonlLog(path)
    except OSError as exc:
        raise click.ClickException(f"cannot write the request log {path}: {exc.strerror or exc}") from None


def _verified(loader, session, thermal):
    """`--verify`: load in the foreground and check the model; a failing check exits before listening."""
    from edgekit.cli.verify import verify_before_serving

    preloaded = loader()
    code = verify_before_serving(preloaded, _say)
    if code:
        _stop(session, thermal)
        raise SystemExit(code)
    return preloaded


def _stop(*parts) -> None:
    for part in parts:
        if part is not None:
            part.stop()


def _run(app, host, port, log_level, session, thermal) -> None:
    """Listen until SIGTERM / Ctrl-C, then stop the power session and thermal monitor."""
    import signal

    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handlers it
    # found; these no-op handlers make that a normal exit (status 0) after the log is flushed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
    finally:
        _stop(session, thermal)
    _say("stopped")


def _power_session(b, power, channels, board, hz, path, log_max_mb, grams_per_kwh, country, thermal=None):
    """The started PowerSession for `--power` logging to `path`, or None for `--power none`."""
    from edgekit.device.power.co2 import grid_intensity
    from edgekit.device.power.probe import Machine
    from edgekit.device.power.session import PowerSession
    from edgekit.device.power.supply import battery_percent

    try:
        intensity = grid_intensity(grams_per_kwh, country)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--country") from None
    prefer = b.manifest.get("target", {}).get("power", {}).get("prefer", [])
    machine = Machine()
    source = pick_source(power, prefer, channels, board, machine=machine, log=_say)
    if source is None:
        return None
    try:
        session = PowerSession(source, hz=hz, log_path=path, log_max_bytes=int(log_max_mb * 1e6), intensity=intensity,
                               battery=lambda: battery_percent(machine.power_supply, machine.battery_info),
                               thermal=thermal).start()
    except OSError as exc:
        raise click.ClickException(f"cannot write the power log {path}: {exc.strerror or exc}") from None
    _say(f"power log {path} ({hz:g} Hz); CO2 at {intensity.label()}")
    return session
