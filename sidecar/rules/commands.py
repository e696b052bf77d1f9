"""`sidecar rules export|check|reference` and `sidecar slo report`.

`rules check` and `rules export` show the rule set as the sidecar would evaluate it.

Both read the same configuration the sidecar runs with (`--config FILE`, else `$SIDECAR_CONFIG`,
plus `SIDECAR_*` variables), so what is checked or exported is what the running sidecar
evaluates. A bad rule is reported by name and key, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sidecar.config import ENV_CONFIG_FILE, Config, ConfigError, load_config
from sidecar.rules.describe import describe_rule
from sidecar.rules.spec import RuleSet, SpecError, effective_rules

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FORMATS = ("prometheus",)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = commands.add_parser("rules", help="check the alert rules and SLOs, or export them for Prometheus")
    actions = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)

    export = actions.add_parser("export", help="write the rules and SLOs as a Prometheus rule file")
    export.add_argument(
        "--format", choices=FORMATS, default="prometheus",
        help="output format (default: prometheus, a rule file for Prometheus 2.42 or later)",
    )  # fmt: skip
    export.add_argument("--output", type=Path, metavar="FILE", help="write here instead of to stdout")
    export.add_argument(
        "--selector", default="", metavar="MATCHERS",
        help='label matchers added to every series the rules read, e.g. \'job="sidecar"\' '
             "(for a Prometheus that also scrapes dcgm-exporter or other OpenTelemetry servers)",
    )  # fmt: skip
    _config_argument(export)
    export.set_defaults(handler=_export)

    check = actions.add_parser("check", help="validate the rules and SLOs and print one line per rule")
    _config_argument(check)
    check.set_defaults(handler=_check)

    reference = actions.add_parser("reference", help="print the signals, shipped rules and SLOs (Markdown)")
    reference.set_defaults(handler=_reference)

    slo = commands.add_parser("slo", help="service level objectives: availability and error budget")
    slo_actions = slo.add_subparsers(dest="slo_command", metavar="ACTION", required=True)
    report = slo_actions.add_parser(
        "report", help="availability, allowed and used downtime, budget left and burn rates per SLO"
    )
    source = report.add_mutually_exclusive_group()
    source.add_argument(
        "--admin", metavar="URL", help="a running sidecar's admin listener, e.g. http://127.0.0.1:9180"
    )
    source.add_argument(
        "--state", type=Path, metavar="FILE",
        help="a stopped sidecar's rules state file (default with --config: <data_dir>/rules/state.json)",
    )  # fmt: skip
    _config_argument(report)
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.set_defaults(handler=_slo_report)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"sidecar config (default: ${ENV_CONFIG_FILE}, else built-in defaults)"
    )


class _UsageError(Exception):
    pass


def _load(args: argparse.Namespace) -> tuple[Config, RuleSet]:
    """The config and its effective rule set, or a _UsageError naming every problem."""
    try:
        config = load_config(args.config or os.environ.get(ENV_CONFIG_FILE))
    except ConfigError as exc:
        count = len(exc.problems)
        lines = [f"invalid configuration ({count} problem{'s' if count != 1 else ''}):"]
        lines += [f"  {problem}" for problem in exc.problems]
        raise _UsageError("\n".join(lines)) from None
    try:
        return config, effective_rules(config.rules)
    except SpecError as exc:
        raise _UsageError(f"invalid rules: {exc}") from None


def _export(args: argparse.Namespace) -> int:
    from sidecar.rules.promql import export_prometheus, selector_problem

    problem = selector_problem(args.selector)
    if problem:
        print(f"sidecar rules export: --selector: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config, ruleset = _load(args)
    except _UsageError as exc:
        print(f"sidecar rules export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = export_prometheus(ruleset, external_labels=config.rules.external_labels, selector=args.selector)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"sidecar rules export: --output: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    try:
        _, ruleset = _load(args)
    except _UsageError as exc:
        print(f"sidecar rules check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    slos = {slo.name: slo for slo in ruleset.slos}
    rows = [
        (rule.name, rule.labels.get("severity", ""), describe_rule(rule, slos), rule.origin) for rule in ruleset.rules
    ]
    name_width = max((len(row[0]) for row in rows), default=0)
    severity_width = max((len(row[1]) for row in rows), default=0)
    for name, severity, condition, origin in rows:
        print(f"{name:<{name_width}}  {severity:<{severity_width}}  {condition}  [{origin}]")
    from_slos = sum(1 for rule in ruleset.rules if rule.origin.startswith("slo:"))
    print(f"OK: {_plural(len(ruleset.rules), 'rule')} ({from_slos} from {_plural(len(ruleset.slos), 'SLO')})")
    return EXIT_OK


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _reference(args: argparse.Namespace) -> int:
    from sidecar.rules.reference import rules_reference

    sys.stdout.write(rules_reference())
    return EXIT_OK


def _slo_report(args: argparse.Namespace) -> int:
    from sidecar.rules.slo_report import format_slo_report, report_json

    try:
        statuses = _statuses_from_admin(args.admin) if args.admin else _statuses_from_state(args)
    except _UsageError as exc:
        print(f"sidecar slo report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Unavailable as exc:
        print(f"sidecar slo report: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(report_json(statuses) if args.json else format_slo_report(statuses))
    return EXIT_OK


class _Unavailable(Exception):
    pass


def _statuses_from_admin(url: str) -> list[dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    target = url.rstrip("/") + "/-/slo"
    try:
        with urllib.request.urlopen(target, timeout=10) as response:  # noqa: S310 - an operator-given URL
            return list(json.load(response))
    except urllib.error.HTTPError as exc:
        raise _Unavailable(f"{target} answered {exc.code} (are rules enabled on that sidecar?)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Unavailable(f"cannot read {target}: {getattr(exc, 'reason', exc)}") from None


def _statuses_from_state(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sidecar.rules.engine import RuleEngine
    from sidecar.rules.state import StateFile

    config, ruleset = _load(args)
    path = args.state or config.rules.state_file or config.data_dir / "rules" / "state.json"
    if not Path(path).exists():
        raise _Unavailable(f"no rules state at {path}; give --state FILE, or --admin URL for a running sidecar")
    try:
        data = StateFile(Path(path)).load()
    except Exception as exc:
        raise _Unavailable(f"cannot read the rules state {path}: {exc}") from None
    engine = RuleEngine(ruleset, instance=config.instance_id or "report")
    engine.load_state((data or {}).get("engine") or {})
    return [status.as_dict() for status in engine.slo_status()]
