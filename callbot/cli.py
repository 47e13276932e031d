"""The ``callbot`` command: ``serve``, ``check-config`` and ``demo``.

Exit codes: 0 success, 2 bad configuration or usage (the message names the file, the key and
the fix; no traceback). ``serve`` and ``demo`` import their machinery only when chosen, so
``check-config`` runs without touching the network stack.
"""
from __future__ import annotations

# gevent must patch the standard library before anything imports ssl, socket or websocket
# (the entry point is the only place this may happen; see docs/architecture.md).
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging
import sys
from typing import Sequence

from callbot.config import AppConfig, ConfigError, load_config

__all__ = ["build_parser", "configure_logging", "format_summary", "main", "socket_action"]

DEFAULT_CONFIG = "config/callbot.yaml"
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str, tag: str = "") -> None:
    """Set the root log level; add one stderr handler with timestamps unless one exists.
    ``tag`` prefixes every message (``[w1] `` in worker 1 of ``serve --workers``)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(name)s", tag + "%(name)s"),
                                               "%Y-%m-%d %H:%M:%S"))
        root.addHandler(handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbot", description="AI voice agent for FreeSWITCH (outbound ESL + "
                                    "mod_audio_stream + OpenAI Realtime).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the ESL and media servers")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       help="overrides log_level from the config file")
    serve.add_argument("--drain-s", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, let calls finish for up to this long before hanging them up "
                            "politely (SIGINT: at most 3 s; a second signal: at once; default 30)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N worker processes (one core each) sharing the ESL port; worker i "
                            "serves media on media.listen port + i (default 1: one process)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    check = commands.add_parser("check-config", help="validate the configuration and personas, "
                                                      "print a summary and the dialplan line")
    check.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    demo = commands.add_parser("demo", help="run a call end to end against local fakes")
    demo.add_argument("--out", metavar="FILE.wav", help="write what the caller heard")
    demo.add_argument("--module", default="audio_stream",
                      choices=("audio_stream", "audio_stream_full_duplex", "openai_audio_stream"),
                      help="what the fake FreeSWITCH has installed (default: audio_stream)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "demo":
        from callbot.demo import main as demo_main
        return int(demo_main(args))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"callbot: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(format_summary(config))
        return 0
    from callbot.runtime.workers import check_workers
    try:
        check_workers(config, args.workers)
    except ConfigError as exc:
        print(f"callbot: configuration error: {exc}", file=sys.stderr)
        return 2
    tag = "" if args.worker_index is None else f"[w{args.worker_index}] "
    configure_logging(args.log_level or config.log_level, tag=tag)
    from callbot.runtime.server import serve
    return serve(config, args)


def socket_action(config: AppConfig) -> str:
    """The dialplan action that hands a call to callbot (outbound ESL to ``esl.listen``)."""
    listen = config.esl.listen
    target = f"127.0.0.1:{listen.port}" if listen.is_wildcard else str(listen)
    return f'<action application="socket" data="{target} async full"/>'


def format_summary(config: AppConfig) -> str:
    """A readable report of a valid configuration (never the API key itself)."""
    esl, media, rt = config.esl, config.media, config.realtime
    key = "set" if config.api_key() else "NOT set (serve cannot reach the model without it)"
    if media.model_in_freeswitch:
        media_lines = [f"  media            mod_openai_audio_stream holds the model socket in FreeSWITCH; "
                       "callbot carries no audio (no media endpoint)"]
        if media.api_key_from == "global":
            key_line = ("  API key          FreeSWITCH global STREAM_OPENAI_API_KEY (vars.xml); "
                        "callbot never handles it")
        else:
            key_line = (f"  API key          ${rt.api_key_env} is {key}; set on the channel just before "
                        "start, cleared right after")
    else:
        playback = "module plays raw streamAudio, paced by callbot" if media.playback == "stream" \
            else "files played with ESL playback"
        media_lines = [f"  media listen     {media.listen}  (module mod_{media.module}, {playback})",
                       f"  media URL        {media.url}  at {media.rate} Hz"]
        key_line = f"  API key          ${rt.api_key_env} is {key}"
    lines = [
        f"callbot configuration OK: {config.config_path}",
        "",
        f"  ESL listen       {esl.listen}  (linger {esl.linger_s} s, "
        f"command timeout {esl.command_timeout_s} s)",
        *media_lines,
        f"  model            {rt.model} at {rt.url}  (audio {rt.audio_format}, "
        f"connect timeout {rt.connect_timeout_s} s)",
        key_line,
        f"  records          {config.records_dir}",
        f"  log level        {config.log_level}",
        "",
        f"Personas ({config.personas_dir}):",
        *_persona_lines(config),
        f"  per call: channel variable {config.routing.variable}=<persona> overrides routing "
        "(dialplan 'set', or {" + config.routing.variable + "=<persona>} on originate)",
    ]
    if config.warnings:
        lines += ["", "Warnings:", *(f"  - {w}" for w in config.warnings)]
    lines += ["", "Dialplan action to paste into your callbot extension:",
              f"  {socket_action(config)}"]
    if config.esl.listen.is_wildcard:
        lines.append(f"  (callbot binds {config.esl.listen.host}: use the address FreeSWITCH "
                     "reaches it on)")
    return "\n".join(lines)


def _persona_lines(config: AppConfig) -> list[str]:
    routing = config.routing
    lines = []
    for name, persona in sorted(config.personas.items()):
        rules = [f"destination {number}" for number, target in routing.destinations.items()
                 if target == name]
        if name == routing.default:
            rules.append("default")
        extras = [persona.turn_detection.type, f"voice {persona.voice}",
                  f"tools {' '.join(t.name for t in persona.tools)}" if persona.tools
                  else "no tools"]
        if persona.dtmf:
            extras.append(f"DTMF {' '.join(persona.dtmf)}")
        if persona.greeting:
            extras.append("greets first")
        lines.append(f"  {name:<16} {', '.join(extras)}; routing: "
                     f"{', '.join(rules) or 'channel variable only'}")
    return lines
