"""The `sidecar` command.

Exit codes: 0 success, 1 the sidecar failed at run time, 2 bad usage or an
invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import ENV_CONFIG_FILE, Config, ConfigError, KeyPath, default_data_dir, load_config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Proxy, tracing, GPU metrics, audit and alerting beside a local GPU model server.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the sidecar in front of a model server")
    run.add_argument(
        "--config", metavar="FILE", help=f"YAML config file (default: ${ENV_CONFIG_FILE}, else built-in defaults)"
    )
    # No argparse defaults: an unset flag leaves the config file's value in force, so the help
    # shows the built-in defaults the flags fall back to.
    run.add_argument(
        "--upstream", metavar="URL",
        help=f"model server: http://HOST:PORT or unix:/path.sock; sets upstream.url (default: {_default('upstream', 'url')})",
    )  # fmt: skip
    run.add_argument(
        "--listen", metavar="HOST:PORT",
        help=f"proxy listen address; sets proxy.listen (default: {_default('proxy', 'listen')})",
    )  # fmt: skip
    run.add_argument(
        "--admin-listen", metavar="HOST:PORT",
        help=f"admin listen address (metrics, health, status page); sets admin.listen (default: {_default('admin', 'listen')})",
    )  # fmt: skip
    run.add_argument(
        "--data-dir", metavar="DIR",
        help=f"directory for the sidecar's state (audit trail, rule state); sets data_dir (default: {default_data_dir()})",
    )  # fmt: skip
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--no-env", action="store_true", help="ignore SIDECAR_* environment variables (check the file alone)"
    )
    check.set_defaults(handler=_check_config)

    demo = commands.add_parser(
        "demo", help="run the torch demo model server with the sidecar in front, send traffic, keep serving"
    )
    demo.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until Ctrl-C)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--tokens-per-second", type=float, default=40.0, metavar="N", help="pace generation (0: flat out)")
    demo.add_argument("--data-dir", metavar="DIR", help="the sidecar's data directory (default: ./sidecar-data)")
    demo.add_argument("--listen", metavar="HOST:PORT", help="proxy listen address (default: a free loopback port)")
    demo.add_argument("--admin-listen", metavar="HOST:PORT", help="admin listen address (default: a free loopback port)")
    demo.set_defaults(handler=_demo)

    demo_server = commands.add_parser("demo-server", help="run only the torch demo model server")
    demo_server.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8000")
    demo_server.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo_server.add_argument("--tokens-per-second", type=float, default=0.0, metavar="N", help="pace generation (0: flat out)")
    demo_server.add_argument("--model-name", default=None, metavar="NAME", help="the name the model is served as")
    demo_server.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1)")
    demo_server.set_defaults(handler=_demo_server)

    bench = commands.add_parser(
        "bench", help="measure the sidecar beside direct access, a bare aiohttp proxy and nginx"
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON (the table goes to standard error)")
    bench.add_argument("--duration", type=float, default=5.0, metavar="S", help="seconds per target per round (default 5)")
    bench.add_argument("--rounds", type=int, default=3, metavar="N", help="interleaved rounds (default 3)")
    bench.add_argument(
        "--scenarios", default="latency,throughput,sse,memory,audit", metavar="LIST",
        help="comma-separated: latency, throughput, sse, memory, audit (the default), and costs: "
             "the CPU each part of the defaults takes per request",
    )  # fmt: skip
    bench.add_argument("--memory-duration", type=float, default=60.0, metavar="S", help="steady-load seconds for memory (default 60)")
    bench.add_argument("--audit-events", type=int, default=50_000, metavar="N", help="events fed to the audit pipeline (default 50000)")
    bench.set_defaults(handler=_bench)

    probe = commands.add_parser(
        "gpu-probe", help="measure matmul TFLOP/s and memory bandwidth with torch; flag a degraded GPU"
    )
    probe.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default auto)")
    probe.add_argument("--seconds", type=float, default=2.0, metavar="S", help="measuring time (default 2)")
    probe.add_argument("--json", action="store_true", help="print the result as JSON")
    probe.set_defaults(handler=_gpu_probe)

    from sidecar.audit.commands import add_commands as add_audit_commands

    add_audit_commands(commands)

    from sidecar.rules.commands import add_commands as add_rules_commands

    add_rules_commands(commands)

    from sidecar.proxy.auth.commands import add_commands as add_auth_commands

    add_auth_commands(commands)

    reference = commands.add_parser(
        "config-reference", help="print the configuration reference (Markdown) with every key and default"
    )
    reference.set_defaults(handler=_config_reference)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def _default(section: str, key: str) -> object:
    """The built-in default of `section.key`, as a config file would spell it."""
    section_model = Config.model_fields[section].annotation
    assert section_model is not None
    return section_model.model_fields[key].default


def _flags(args: argparse.Namespace) -> dict[KeyPath, Any]:
    given = {
        ("upstream", "url"): args.upstream,
        ("proxy", "listen"): args.listen,
        ("admin", "listen"): args.admin_listen,
        ("data_dir",): args.data_dir,
    }
    return {key: value for key, value in given.items() if value is not None}


def _print_problems(problems: list[str]) -> None:
    print(f"invalid configuration ({len(problems)} problem{'s' if len(problems) != 1 else ''}):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from sidecar.app import ConfigSource, StartupError, serve
    from sidecar.logs import LogPipeline
    from sidecar.runtime import settle_heap, tune_interpreter

    source = ConfigSource(args.config or os.environ.get(ENV_CONFIG_FILE), flags=_flags(args))
    try:
        config = source.load()
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    logs = LogPipeline(config.log.level, config.log.format)
    logs.start()
    try:
        tune_interpreter(config.runtime)
        _event_loop_runner(config)(serve(config, source, logs, on_started=lambda: settle_heap(config.runtime)))
    except StartupError as exc:
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        logs.stop()
    return EXIT_OK


def _event_loop_runner(config: Config) -> Callable[[Any], Any]:
    choice = config.runtime.event_loop
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit(
                    "runtime.event_loop is 'uvloop' but uvloop is not installed "
                    "(pip install 'inference-sidecar[speed]')"
                ) from None
        else:
            return lambda coro: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(coro)
    return asyncio.run


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, env={} if args.no_env else None)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return EXIT_USAGE
    if config.auth.enabled:
        from sidecar.proxy.auth.authenticator import Authenticator, AuthSetupError

        try:
            Authenticator(config.auth)
        except AuthSetupError as exc:
            _print_problems(str(exc).splitlines())
            return EXIT_USAGE
    if config.rules.enabled:
        from sidecar.rules.spec import SpecError, effective_rules

        try:
            ruleset = effective_rules(config.rules)
        except SpecError as exc:
            _print_problems([f"{args.file}: {exc}"])
            return EXIT_USAGE
        print(f"{args.file}: OK: {config.summary()}, {len(ruleset.rules)} alert rules, {len(ruleset.slos)} SLOs")
        return EXIT_OK
    print(f"{args.file}: OK: {config.summary()}")
    return EXIT_OK


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "the demo needs torch: pip install 'inference-sidecar[demo]' (or your own CUDA build of torch)"
        ) from None


def _demo(args: argparse.Namespace) -> int:
    _require_torch()
    from sidecar.demo.tour import default_demo_data_dir, run_demo
    from sidecar.logs import LogPipeline

    logs = LogPipeline("warning", "text")
    logs.start()
    try:
        return asyncio.run(
            run_demo(
                duration=args.duration,
                device=args.device,
                tokens_per_second=args.tokens_per_second,
                data_dir=args.data_dir or default_demo_data_dir(),
                listen=args.listen,
                admin_listen=args.admin_listen,
            )
        )
    finally:
        logs.stop()


def _demo_server(args: argparse.Namespace) -> int:
    _require_torch()
    from sidecar.config import parse_listen_address
    from sidecar.demo.server import DEFAULT_MODEL_NAME, DemoSettings, serve_demo_model

    try:
        address = parse_listen_address(args.listen)
    except ValueError as exc:
        print(f"--listen: got {args.listen!r}; expected {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = DemoSettings(
        model_name=args.model_name or DEFAULT_MODEL_NAME,
        device=args.device,
        tokens_per_second=args.tokens_per_second,
        threads=args.threads,
    )

    async def serve() -> None:
        runner, port = await serve_demo_model(settings, address.host, address.port)
        print(f"demo model server on http://{address.host}:{port} (model {settings.model_name!r})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    import json

    from sidecar.bench.run import SCENARIOS, format_table, run_bench

    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        print(f"--scenarios: unknown {', '.join(unknown)}; expected some of {', '.join(SCENARIOS)}", file=sys.stderr)
        return EXIT_USAGE
    results = asyncio.run(run_bench(args.duration, args.rounds, scenarios, args.memory_duration, args.audit_events))
    if args.json:
        # The table goes to the terminal as well; standard output stays plain JSON for a pipe.
        print(format_table(results), file=sys.stderr)
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results))
    return EXIT_OK


def _gpu_probe(args: argparse.Namespace) -> int:
    import json

    _require_torch()
    from sidecar.gpu.probe import format_probe, run_probe

    try:
        result = run_probe(args.device, args.seconds)
    except ValueError as exc:
        print(f"sidecar gpu-probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        # No CUDA where a GPU was asked for, or no dtype works: the probe could not run.
        print(f"sidecar gpu-probe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(result.as_dict(), indent=1) if args.json else format_probe(result))
    return EXIT_FAILURE if result.degraded else EXIT_OK


def _config_reference(args: argparse.Namespace) -> int:
    from sidecar.config import config_reference

    print(config_reference(), end="")
    return EXIT_OK


def _version(args: argparse.Namespace) -> int:
    import aiohttp

    print(f"inference-sidecar {__version__} (Python {platform.python_version()}, aiohttp {aiohttp.__version__})")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
