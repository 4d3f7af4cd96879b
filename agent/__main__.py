"""Command line: run, check-config, devices, version.

Exit codes follow sysexits: 78 (EX_CONFIG) for a bad config, so systemd's
RestartPreventExitStatus=78 stops a restart loop that could never succeed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agent import __version__

EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 64, 69, 78


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, help="YAML config; without it, embedded defaults (demo)")
    run.add_argument("--listen-stdin", action="store_true",
                     help="listen to raw 16 kHz mono S16_LE PCM on standard input instead of a microphone")
    run.add_argument("--listen-wav", type=Path, help="listen to a WAV file instead of a microphone")
    run.add_argument("--fast", action="store_true", help="with --listen-wav: as fast as possible, not real time")
    check = sub.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("path", type=Path)
    sub.add_parser("devices", help="list audio input devices")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


def cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    import yaml

    from agent.config import ConfigError
    from agent.config_store import ConfigStore

    try:
        store = ConfigStore(args.path)
        store.load()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.path}: {problem}", file=sys.stderr)
        return EX_CONFIG
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
    from agent.config_store import ConfigStore
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
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agent.app import App

    try:
        app = App(store, listen_source=_listen_source(args))
        return app.run()
    except AgentError as exc:
        logging.getLogger("agent").error("%s", exc.message)
        return EX_UNAVAILABLE


def _listen_source(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.listen_stdin:
        return {"kind": "stdin"}
    if args.listen_wav:
        return {"kind": "wav", "path": str(args.listen_wav), "realtime": not args.fast}
    return None


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "devices": cmd_devices, "version": cmd_version}

if __name__ == "__main__":
    sys.exit(main())
