"""Command line: run, check-config, doctor, devices, version, schema.

Exit codes follow sysexits: 78 (EX_CONFIG) for a bad config (or a Python too old to run the
agent), so systemd's RestartPreventExitStatus=78 stops a restart loop that could never succeed.
`doctor` has its own codes (agent/ops/doctor.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent import __version__

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 64, 69, 78
MIN_PYTHON = (3, 10)  # `X | Y` annotations are evaluated at run time into types.UnionType


def main(argv: list[str] | None = None) -> int:
    if sys.version_info < MIN_PYTHON:
        # Before anything else is imported: on an older Python the config loader fails deep inside.
        print(f"voice-agent needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; "
              f"{sys.executable} is Python {sys.version.split()[0]}", file=sys.stderr)
        return EX_CONFIG
    parser = argparse.ArgumentParser(prog="voice-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, help="YAML config; without it, embedded defaults (demo)")
    run.add_argument("--listen-stdin", action="store_true",
                     help="listen to raw 16 kHz mono S16_LE PCM on standard input instead of a microphone")
    run.add_argument("--listen-wav", type=Path, help="listen to a WAV file instead of a microphone")
    run.add_argument("--fast", action="store_true", help="with --listen-wav: as fast as possible, not real time")
    check = sub.add_parser("check-config", help="validate a config file and print the effective config",
                           description="Validate a config file (schema, and whether the chosen engines can "
                                       "work: model files, grammar, API keys) and print the effective config "
                                       "with secrets as ***. Exit 78 when it is refused.")
    check.add_argument("path", type=Path)
    doctor = sub.add_parser("doctor", help="check that this machine can run the config (engines, broker, memory)",
                            description="Check the config, the chosen engines' packages, programs and models, "
                                        "the broker with the configured credentials, and the memory the "
                                        "engines need. One line per check: OK, or PROBLEM with a fix.",
                            epilog=_doctor_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--config", type=Path, help="YAML config; without it, embedded defaults (demo)")
    doctor.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for the broker (default 5)")
    sub.add_parser("devices", help="list audio input devices")
    sub.add_parser("version", help="print the version")
    sub.add_parser("schema", help="print the config file's JSON Schema",
                   description="Print the JSON Schema of the config file, generated from the settings "
                               "(types, ranges, choices, docs; secrets writeOnly; x-remote: who may change "
                               "a key over MQTT). docs/config.schema.json is this output.")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return EX_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from agent.config.jsonschema import config_schema
    print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    return EX_OK


def _doctor_help() -> str:
    from agent.ops.doctor import EXIT_CODES_HELP
    return EXIT_CODES_HELP


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.ops import doctor
    return doctor.run(args.config, timeout_s=args.timeout)


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    from agent.config import ConfigError
    from agent.config.checks import engine_problems, language_notes, notices
    from agent.config.store import ConfigStore

    try:
        store = ConfigStore(args.path)
        settings = store.load()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.path}: {problem}", file=sys.stderr)
        return EX_CONFIG
    refused = engine_problems(settings)
    if refused:
        for problem in refused:
            print(f"{args.path}: {problem}", file=sys.stderr)
        return EX_CONFIG
    for note in language_notes(settings):   # works, but not as the user may think: said, not refused
        print(f"{args.path}: note: {note}", file=sys.stderr)
    for notice in notices(settings):
        print(f"{args.path}: warning: {notice}", file=sys.stderr)
    print(yaml.safe_dump(store.effective(redact=True), sort_keys=False), end="")
    return EX_OK


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        from agent.audio.capture import list_devices
        devices = list_devices()
    except Exception as exc:  # no PortAudio, no PyAudio: say so, no traceback
        print(f"cannot list audio devices: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    for d in devices:
        mark = "  [default input]" if d.get("default") else ""
        print(f"{d['index']:>3}  {d['name']}  ({d['max_input_channels']} ch, {d['default_sample_rate']:.0f} Hz){mark}")
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import ConfigError
    from agent.config.store import ConfigStore
    from agent.errors import AgentError

    overrides: dict[str, Any] = {}
    if args.listen_stdin or args.listen_wav:
        overrides["listen"] = {"enabled": True}
    try:
        store = ConfigStore(args.config, overrides=overrides)
        settings = store.load()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config or '<defaults>'}: {problem}", file=sys.stderr)
        return EX_CONFIG
    from agent.ops.logs import configure_logging
    configure_logging(settings.log_level)
    if os.geteuid() == 0:
        from agent.ops.doctor import ROOT_FIX, ROOT_WARNING
        logging.getLogger("agent").warning("%s; %s", ROOT_WARNING, ROOT_FIX)
    from agent.app import App

    from agent.ops.restart import RESTART_EXIT, reexec, under_systemd

    try:
        app = App(store, listen_source=_listen_source(args))
        code = app.run()
    except AgentError as exc:
        logging.getLogger("agent").error("%s", exc.message)
        return EX_UNAVAILABLE
    if code == RESTART_EXIT and not under_systemd(os.environ):
        reexec()   # no supervisor to start us again: the same command line, in this process
    return code


def _listen_source(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.listen_stdin:
        return {"kind": "stdin"}
    if args.listen_wav:
        return {"kind": "wav", "path": str(args.listen_wav), "realtime": not args.fast}
    return None


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "doctor": cmd_doctor, "devices": cmd_devices,
            "version": cmd_version, "schema": cmd_schema}

if __name__ == "__main__":
    sys.exit(main())
