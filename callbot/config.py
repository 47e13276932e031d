"""callbot's configuration file: loading, validation and the typed, immutable result.

``load_config(path)`` reads one YAML file (``yaml.safe_load`` only), checks every key and
value, loads the persona files it points to and returns an :class:`AppConfig`. Anything wrong
raises :class:`ConfigError`, which names the file, the key path, the problem and the fix.
Unknown keys are errors (with a "did you mean ...?" hint) so that a typo never passes silently.

The OpenAI API key is never part of the file: ``realtime.api_key_env`` names the environment
variable that holds it, and :meth:`AppConfig.api_key` reads that variable when called.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

# ConfigError, Section, read_yaml, suggest and describe live in callbot.config_reader; they are
# re-exported here so that ``from callbot.config import ConfigError`` keeps working.
from callbot.config_reader import ConfigError, Section, describe, read_yaml, suggest
from callbot.persona import Persona, load_persona

__all__ = [
    "AppConfig", "AudioFormat", "ConfigError", "EslConfig", "ListenAddress", "MediaConfig",
    "RealtimeConfig", "RoutingConfig", "Section", "describe", "load_config", "parse_listen",
    "read_yaml", "suggest",
]

MEDIA_MODULES = ("audio_stream", "openai_audio_stream")
"""Media modules callbot can drive: the community mod_audio_stream (and its full-duplex builds,
``playback: stream``), and VoiSmart's mod_openai_audio_stream (callbot as the control plane)."""
PLAYBACK_MODES = ("file", "stream")
KEY_SOURCES = ("global", "channel")

_FUTURE_MODULES = {
    "openai_s2s": (
        "jambonz's mod_openai_s2s speaks only the beta Realtime protocol, shut down by OpenAI "
        "on 2026-05-12",
        "use module: audio_stream (the community mod_audio_stream)",
    ),
}
AudioFormat = Literal["pcm16", "pcmu", "pcma"]
_AUDIO_FORMATS: tuple[AudioFormat, ...] = ("pcm16", "pcmu", "pcma")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_HOSTNAME = re.compile(r"^[A-Za-z0-9.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_VAR = re.compile(r"^[A-Za-z0-9_]+$")

_TOP_KEYS = ("esl", "media", "realtime", "personas", "routing", "records", "log_level")
_ESL_KEYS = ("listen", "linger_s", "command_timeout_s")
_MEDIA_KEYS = ("listen", "url", "rate", "module", "playback", "api_key_from")
_REALTIME_KEYS = ("url", "model", "api_key_env", "audio_format", "connect_timeout_s")
_ROUTING_KEYS = ("variable", "default", "destinations")
_SECRET_HINTS = {
    "api_key": "never put the API key in YAML: export it in the environment and set "
               "realtime.api_key_env to the variable's name",
}


@dataclass(frozen=True)
class ListenAddress:
    """A TCP address to bind. ``host`` is an IPv4/IPv6 address or a hostname (no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("0.0.0.0", "::")


@dataclass(frozen=True)
class EslConfig:
    """Outbound Event Socket server (FreeSWITCH's ``socket`` application connects here)."""

    listen: ListenAddress
    linger_s: int
    command_timeout_s: float


@dataclass(frozen=True)
class MediaConfig:
    """callbot's WebSocket endpoint for the media module. ``url`` is the base URL the module is
    told to connect to (no trailing slash; callbot appends the per-call path)."""

    listen: ListenAddress
    url: str
    rate: int
    module: str
    playback: str = "file"
    """audio_stream only: ``file`` (community build: streamAudio -> file -> ESL playback) or
    ``stream`` (full-duplex builds play raw streamAudio themselves; callbot paces it)."""
    api_key_from: str = "global"
    """openai_audio_stream only: ``global`` (FreeSWITCH's global STREAM_OPENAI_API_KEY, set in
    vars.xml: the key never sits on a channel) or ``channel`` (callbot sets it on the channel
    just before ``start`` and clears it right after)."""

    @property
    def model_in_freeswitch(self) -> bool:
        """True when FreeSWITCH's module holds the model socket (callbot carries no audio)."""
        return self.module == "openai_audio_stream"


@dataclass(frozen=True)
class RealtimeConfig:
    """The OpenAI Realtime (GA) endpoint. ``url`` has no query: callbot adds ``?model=``."""

    url: str
    model: str
    api_key_env: str
    audio_format: AudioFormat
    connect_timeout_s: float


@dataclass(frozen=True)
class RoutingConfig:
    """How a call picks its persona (see :func:`callbot.core.routing.select_persona`)."""

    variable: str
    default: str
    destinations: Mapping[str, str]


@dataclass(frozen=True)
class AppConfig:
    """The validated configuration. Paths are absolute. Holds no secret."""

    config_path: Path
    esl: EslConfig
    media: MediaConfig
    realtime: RealtimeConfig
    routing: RoutingConfig
    personas_dir: Path
    records_dir: Path
    log_level: str
    personas: Mapping[str, Persona]
    warnings: tuple[str, ...] = field(default=())

    def api_key(self) -> str | None:
        """The API key from the environment variable named by ``realtime.api_key_env``, read
        now; ``None`` when the variable is unset or empty. Never stored in the config."""
        return os.environ.get(self.realtime.api_key_env) or None


def parse_listen(text: str) -> ListenAddress:
    """Parse ``host:port`` or ``[ipv6]:port``. Raises ValueError with a readable reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address must be written as [address]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{host}' is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if ":" in host:
            raise ValueError("an IPv6 address must be written as [address]:port")
        if not _HOSTNAME.match(host):
            raise ValueError(f"'{host}' is not a valid host")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port '{port}' is not a number from 1 to 65535")
    return ListenAddress(host, int(port))


def load_config(path: str | Path, *, import_handlers: bool = True) -> AppConfig:
    """Load and validate the config file and every persona it uses.

    With ``import_handlers`` (the default) every tool handler is imported and checked to be
    callable. Raises :class:`ConfigError` on the first problem found.
    """
    path = Path(path)
    root = Section.root(read_yaml(path), str(path))
    root.check_keys(_TOP_KEYS, _SECRET_HINTS)
    warnings: list[str] = []
    esl = _esl(root.child("esl"), warnings)
    media = _media(root.child("media"), warnings)
    realtime = _realtime(root.child("realtime"))
    if media.model_in_freeswitch and realtime.audio_format != "pcm16":
        raise root.child("realtime").error(
            "audio_format", f"{realtime.audio_format} cannot be used with media.module "
                            "openai_audio_stream: that module sends and plays PCM16 at 24 kHz only "
                            "(it resamples to the channel itself)",
            "use audio_format: pcm16 (or module: audio_stream for G.711 end to end)")
    if realtime.audio_format != "pcm16" and media.rate == 16000 and not media.model_in_freeswitch:
        warnings.append(
            f"realtime.audio_format {realtime.audio_format} with media.rate 16000 works but "
            "resamples every frame in Python; media.rate: 8000 needs no resampling")
    base = path.resolve().parent
    personas_dir = _directory(root, "personas", base, must_exist=True)
    records_dir = _directory(root, "records", base, must_exist=False)
    log_level = _log_level(root)
    personas = _load_personas(root, personas_dir, import_handlers, warnings)
    if media.model_in_freeswitch:
        warnings += _module_barge_in_warnings(personas)
    routing = _routing(root.child("routing"), personas)
    return AppConfig(
        config_path=path.resolve(), esl=esl, media=media, realtime=realtime, routing=routing,
        personas_dir=personas_dir, records_dir=records_dir, log_level=log_level,
        personas=MappingProxyType(personas), warnings=tuple(warnings))


def _listen(sec: Section, default: str, warnings: list[str]) -> ListenAddress:
    text = sec.string("listen", default)
    try:
        address = parse_listen(text)
    except ValueError as exc:
        raise sec.error("listen", f"{exc} (got '{text}')",
                        "write host:port, e.g. 127.0.0.1:8084, or [::1]:8084 for IPv6") from None
    if not address.is_loopback:
        warnings.append(f"{sec.key_path('listen')} binds {address.host}: "
                        "reachable from the network")
    return address


def _esl(sec: Section, warnings: list[str]) -> EslConfig:
    sec.check_keys(_ESL_KEYS)
    return EslConfig(
        listen=_listen(sec, "127.0.0.1:8084", warnings),
        linger_s=sec.integer("linger_s", 10, lo=1, hi=3600),
        command_timeout_s=sec.number("command_timeout_s", 5, lo=0, lo_open=True, hi=300))


def _media(sec: Section, warnings: list[str]) -> MediaConfig:
    sec.check_keys(_MEDIA_KEYS)
    listen = _listen(sec, "127.0.0.1:8090", warnings)
    if sec.has("url"):
        url = _media_url(sec, sec.string("url"))
    elif ":" in listen.host and not listen.is_wildcard:
        raise sec.error("url", f"the default URL would use the IPv6 address {listen.host}, and "
                               "mod_audio_stream accepts no IPv6 literal in a URL",
                        "set media.url to ws://<IPv4 address or hostname>:<port>")
    else:
        host = "127.0.0.1" if listen.is_wildcard else listen.host
        url = f"ws://{host}:{listen.port}"
    if url.startswith("wss://"):
        warnings.append("media.url uses wss://: callbot's endpoint speaks plain ws, so this "
                        "needs a TLS proxy in front of it and mod_audio_stream built with "
                        "-DUSE_TLS=ON")
    rate = sec.integer("rate", 16000)
    if rate not in (8000, 16000):
        raise sec.error("rate", f"{rate} is not supported",
                        "use 8000 (G.711 legs) or 16000 (wideband legs)")
    module = _module(sec)
    playback = sec.string("playback", "file", choices=PLAYBACK_MODES)
    if module == "openai_audio_stream" and playback != "file":
        raise sec.error("playback", "mod_openai_audio_stream plays the model's audio itself; "
                                    "playback: stream is for full-duplex mod_audio_stream builds",
                        "remove media.playback (or use module: audio_stream)")
    key_from = sec.string("api_key_from", "global", choices=KEY_SOURCES)
    if module != "openai_audio_stream" and sec.has("api_key_from"):
        warnings.append("media.api_key_from only matters with module: openai_audio_stream; ignored")
    return MediaConfig(listen=listen, url=url, rate=rate, module=module, playback=playback,
                       api_key_from=key_from)


def _media_url(sec: Section, url: str) -> str:
    """Apply mod_audio_stream's own URL rules, so a bad URL fails here and not on the call."""
    fix = "write ws://host:port[/path], host an IPv4 address or hostname"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        raise sec.error("url", f"'{url}' must start with ws:// or wss://", fix)
    if "?" in rest or "#" in rest:
        raise sec.error("url", f"'{url}' has a query or fragment; it is a base URL to which "
                               "callbot appends the per-call path", "remove everything from '?'")
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):
        raise sec.error("url", f"'{url}' uses an IPv6 literal, which mod_audio_stream rejects",
                        "use an IPv4 address or a hostname")
    host, _, port = hostport.partition(":")
    if not host or not _HOSTNAME.match(host):
        raise sec.error("url", f"'{url}' has an invalid host '{host}' (mod_audio_stream allows "
                               "letters, digits, '-' and '.')", fix)
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise sec.error("url", f"'{url}' has an invalid port '{port}'", fix)
    return url.rstrip("/")


def _module(sec: Section) -> str:
    module: str = sec.string("module", "audio_stream")
    if module in _FUTURE_MODULES:
        problem, fix = _FUTURE_MODULES[module]
        raise sec.error("module", problem, fix)
    if module not in MEDIA_MODULES:
        raise sec.error("module", f"unknown media module '{module}'",
                        suggest(module, MEDIA_MODULES + tuple(_FUTURE_MODULES)) or
                        "use module: audio_stream")
    return module


def _module_barge_in_warnings(personas: Mapping[str, Persona]) -> list[str]:
    """mod_openai_audio_stream flushes bot audio itself on every speech_started: say which
    persona settings it overrides."""
    out = []
    for name, persona in personas.items():
        if not persona.barge_in or persona.min_interrupt_ms:
            out.append(f"persona {name}: barge_in: false / min_interrupt_ms cannot be honoured with "
                       "media.module openai_audio_stream (the module cuts the bot on every "
                       "speech_started); use module: audio_stream if the caller must not interrupt")
    return out


def _realtime(sec: Section) -> RealtimeConfig:
    sec.check_keys(_REALTIME_KEYS, _SECRET_HINTS)
    url = sec.string("url", "wss://api.openai.com/v1/realtime")
    if not url.startswith(("ws://", "wss://")):
        raise sec.error("url", f"'{url}' must start with wss:// (or ws:// for a local server)",
                        "e.g. wss://api.openai.com/v1/realtime")
    if "?" in url:
        raise sec.error("url", f"'{url}' has a query; callbot adds ?model=<realtime.model>",
                        "remove everything from '?' and put the model in realtime.model")
    model = sec.string("model", "gpt-realtime")
    if not model.strip() or any(c.isspace() for c in model):
        raise sec.error("model", f"'{model}' is not a model name", "e.g. model: gpt-realtime")
    env = sec.string("api_key_env", "OPENAI_API_KEY")
    if env.startswith("sk-"):
        raise sec.error("api_key_env", "this looks like an API key itself; the file must only "
                                       "name the environment variable that holds the key",
                        "export OPENAI_API_KEY=... and write api_key_env: OPENAI_API_KEY "
                        "(and revoke the key if this file was shared)")
    if not _ENV_NAME.match(env):
        raise sec.error("api_key_env", f"'{env}' is not an environment variable name",
                        "e.g. api_key_env: OPENAI_API_KEY")
    return RealtimeConfig(
        url=url.rstrip("/"), model=model, api_key_env=env,
        audio_format=sec.string("audio_format", "pcm16", choices=_AUDIO_FORMATS),
        connect_timeout_s=sec.number("connect_timeout_s", 5, lo=0, lo_open=True, hi=300))


def _directory(root: Section, key: str, base: Path, *, must_exist: bool) -> Path:
    directory: Path = (base / root.string(key, key)).resolve()
    if directory.exists() and not directory.is_dir():
        raise root.error(key, f"{directory} is not a directory", "point it at a directory")
    if must_exist and not directory.is_dir():
        raise root.error(key, f"directory {directory} does not exist",
                         f"create it, or set {key} (relative to {base})")
    return directory


def _log_level(root: Section) -> str:
    level: str = root.string("log_level", "info").lower()
    if level not in _LOG_LEVELS:
        raise root.error("log_level", f"'{level}' is not a log level",
                         suggest(level, _LOG_LEVELS) or f"use one of: {', '.join(_LOG_LEVELS)}")
    return level


def _load_personas(root: Section, directory: Path, import_handlers: bool,
                   warnings: list[str]) -> dict[str, Persona]:
    files = sorted(directory.glob("*.yaml"))
    warnings.extend(f"{p} is ignored: persona files must end in .yaml"
                    for p in sorted(directory.glob("*.yml")))
    if not files:
        raise root.error("personas", f"{directory} holds no persona file (*.yaml)",
                         "add one, e.g. copy config/personas/ava.yaml")
    personas = {}
    for file in files:
        persona = load_persona(file, import_handlers=import_handlers)
        personas[persona.name] = persona
    return personas


def _routing(sec: Section, personas: Mapping[str, Persona]) -> RoutingConfig:
    sec.check_keys(_ROUTING_KEYS)
    variable = sec.string("variable", "callbot_persona")
    if not _CHANNEL_VAR.match(variable):
        raise sec.error("variable", f"'{variable}' is not a channel variable name",
                        "use letters, digits and '_', e.g. callbot_persona")
    default = sec.string("default", fix="add 'default: <persona name>' under routing")
    _check_persona(sec, "default", default, personas)
    destinations: dict[str, str] = {}
    table = sec.child("destinations")
    for number in table.keys():
        if not isinstance(number, str):
            raise table.error(str(number), "a destination number must be a quoted string "
                                           "(YAML reads 9999 as a number and drops '+' and "
                                           "leading zeros)",
                              "put quotes around it, exactly as dialled: "
                              f"'{number}': <persona> (YAML read it as the number {number})")
        destinations[number] = table.string(number)
        _check_persona(table, number, destinations[number], personas)
    return RoutingConfig(variable=variable, default=default,
                         destinations=MappingProxyType(destinations))


def _check_persona(sec: Section, key: str, name: str, personas: Mapping[str, Persona]) -> None:
    if name not in personas:
        known = ", ".join(sorted(personas))
        raise sec.error(key, f"persona '{name}' does not exist (loaded: {known})",
                        suggest(name, list(personas)) or
                        f"use one of: {known}, or add personas/{name}.yaml")
