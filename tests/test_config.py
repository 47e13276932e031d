"""callbot.config: what a telephony engineer sees when the config file is right, and when not."""
from __future__ import annotations

from pathlib import Path

import pytest

from callbot.config import AppConfig, ConfigError, load_config, parse_listen
from callbot.core.routing import select_persona

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "callbot.yaml"
MINIMAL_PERSONA = "name: {name}\ninstructions: Be brief.\n"


def setup(tmp_path: Path, config: str, personas: dict[str, str] | None = None) -> Path:
    """Write ``callbot.yaml`` and ``personas/<name>.yaml`` files; return the config path."""
    directory = tmp_path / "personas"
    directory.mkdir(exist_ok=True)
    for name, text in (personas if personas is not None else {"ava": None}).items():
        (directory / f"{name}.yaml").write_text(text or MINIMAL_PERSONA.format(name=name))
    path = tmp_path / "callbot.yaml"
    path.write_text(config)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_shipped_config_loads_with_its_documented_values() -> None:
    config = load_config(SHIPPED)
    assert str(config.esl.listen) == "127.0.0.1:8084"
    assert config.media.url == "ws://127.0.0.1:8090" and config.media.rate == 16000
    assert config.realtime.model == "gpt-realtime"
    assert config.realtime.api_key_env == "OPENAI_API_KEY"
    assert config.routing.default == "ava" and config.routing.destinations == {"9999": "ava"}
    assert set(config.personas) == {"ava"}
    assert config.personas_dir == REPO / "config" / "personas"
    assert config.records_dir == REPO / "config" / "records"
    assert config.warnings == ()


def test_defaults_need_only_a_default_persona(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing:\n  default: ava\nesl:\n"))
    assert isinstance(config, AppConfig)
    assert (config.esl.listen.host, config.esl.listen.port) == ("127.0.0.1", 8084)
    assert (config.esl.linger_s, config.esl.command_timeout_s) == (10, 5)
    assert str(config.media.listen) == "127.0.0.1:8090"
    assert (config.media.url, config.media.rate, config.media.module) == \
        ("ws://127.0.0.1:8090", 16000, "audio_stream")
    rt = config.realtime
    assert (rt.url, rt.model, rt.api_key_env, rt.audio_format, rt.connect_timeout_s) == \
        ("wss://api.openai.com/v1/realtime", "gpt-realtime", "OPENAI_API_KEY", "pcm16", 5)
    assert config.routing.variable == "callbot_persona"
    assert config.personas_dir == tmp_path / "personas"
    assert config.records_dir == tmp_path / "records"
    assert config.log_level == "info"
    assert config.config_path == tmp_path / "callbot.yaml"


def test_error_message_names_file_key_problem_and_fix(tmp_path: Path) -> None:
    path = setup(tmp_path, "routing: {default: ava}\nesl:\n  listn: 127.0.0.1:8084\n")
    err = error_of(path)
    assert (err.file, err.key, err.problem) == (str(path), "esl.listn", "unknown key")
    assert err.fix == "did you mean 'listen'?"
    assert str(err) == f"{path}: esl.listn: unknown key (fix: did you mean 'listen'?)"


@pytest.mark.parametrize("text, key, fix_part", [
    ("log_levle: info\n", "log_levle", "did you mean 'log_level'?"),
    ("realtime:\n  modle: gpt-realtime\n", "realtime.modle", "did you mean 'model'?"),
    ("media:\n  rte: 8000\n", "media.rte", "did you mean 'rate'?"),
    ("zzz: 1\n", "zzz", "remove it (valid keys here: esl, media, realtime"),
    ("realtime:\n  api_key: sk-abc\n", "realtime.api_key", "never put the API key in YAML"),
])
def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path, text: str, key: str,
                                                   fix_part: str) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\n" + text))
    assert err.key == key and err.problem == "unknown key"
    assert fix_part in err.fix


@pytest.mark.parametrize("text, key, problem, fix", [
    ("media:\n  rate: '16000'\n", "media.rate",
     "must be a whole number, got the string '16000'", "remove the quotes: rate: 16000"),
    ("esl:\n  linger_s: 2.5\n", "esl.linger_s",
     "must be a whole number, got the number 2.5", "write linger_s: <number>"),
    ("esl:\n  linger_s: true\n", "esl.linger_s",
     "must be a whole number, got true (a boolean)", "write linger_s: <number>"),
    ("esl:\n  command_timeout_s: '5'\n", "esl.command_timeout_s",
     "must be a number, got the string '5'", "remove the quotes: command_timeout_s: 5"),
    ("media:\n  rate: 24000\n", "media.rate", "24000 is not supported",
     "use 8000 (G.711 legs) or 16000 (wideband legs)"),
    ("esl:\n  linger_s: 0\n", "esl.linger_s", "0 is out of range",
     "use a value at least 1 and at most 3600"),
    ("realtime:\n  connect_timeout_s: 0\n", "realtime.connect_timeout_s", "0 is out of range",
     "use a value above 0 and at most 300"),
    ("realtime:\n  audio_format: g711\n", "realtime.audio_format",
     "'g711' is not one of: pcm16, pcmu, pcma", "use one of: pcm16, pcmu, pcma"),
    ("realtime:\n  audio_format: pcmu16\n", "realtime.audio_format",
     "'pcmu16' is not one of: pcm16, pcmu, pcma", "did you mean 'pcm16'?"),
    ("log_level: verbose\n", "log_level", "'verbose' is not a log level",
     "use one of: debug, info, warning, error"),
    ("esl: 8084\n", "esl", "must be a mapping, got the number 8084",
     "write 'esl:' followed by indented 'name: value' lines"),
])
def test_wrong_values_are_named_with_a_fix(tmp_path: Path, text: str, key: str, problem: str,
                                           fix: str) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\n" + text))
    assert (err.key, err.problem, err.fix) == (key, problem, fix)


@pytest.mark.parametrize("listen, problem", [
    ("8084", "must be a non-empty text, got the number 8084"),
    ("'127.0.0.1'", "expected host:port (got '127.0.0.1')"),
    ("127.0.0.1:0", "port '0' is not a number from 1 to 65535 (got '127.0.0.1:0')"),
    ("127.0.0.1:99999", "port '99999' is not a number from 1 to 65535 (got '127.0.0.1:99999')"),
    ("'::1:8084'", "an IPv6 address must be written as [address]:port (got '::1:8084')"),
    ("'[zz]:8084'", "'zz' is not an IPv6 address (got '[zz]:8084')"),
    ("bad_host:8084", "'bad_host' is not a valid host (got 'bad_host:8084')"),
])
def test_listen_addresses_are_host_port(tmp_path: Path, listen: str, problem: str) -> None:
    err = error_of(setup(tmp_path, f"routing: {{default: ava}}\nesl:\n  listen: {listen}\n"))
    assert (err.key, err.problem) == ("esl.listen", problem)


def test_parse_listen_accepts_ipv4_hostnames_and_bracketed_ipv6() -> None:
    assert parse_listen("10.0.0.5:8084").host == "10.0.0.5"
    assert parse_listen("localhost:1").is_loopback
    v6 = parse_listen("[::1]:8084")
    assert (v6.host, v6.port, str(v6), v6.is_loopback) == ("::1", 8084, "[::1]:8084", True)


def test_non_loopback_binds_are_allowed_with_a_warning(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\nesl:\n  listen: 0.0.0.0:8084\n"
                                         "media:\n  listen: 0.0.0.0:9000\n"))
    assert config.warnings == ("esl.listen binds 0.0.0.0: reachable from the network",
                               "media.listen binds 0.0.0.0: reachable from the network")
    assert config.media.url == "ws://127.0.0.1:9000"


def test_media_url_defaults_to_the_listen_address(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\nmedia:\n  listen: "
                                         "localhost:9001\n"))
    assert config.media.url == "ws://localhost:9001" and config.warnings == ()


@pytest.mark.parametrize("url, expected", [
    ("ws://10.1.2.3:8090/", "ws://10.1.2.3:8090"),
    ("ws://callbot.example:8090/media", "ws://callbot.example:8090/media"),
    ("ws://callbot", "ws://callbot"),
])
def test_media_url_accepted(tmp_path: Path, url: str, expected: str) -> None:
    config = load_config(setup(tmp_path, f"routing: {{default: ava}}\nmedia:\n  url: {url}\n"))
    assert config.media.url == expected


@pytest.mark.parametrize("url, problem_part", [
    ("http://127.0.0.1:8090", "must start with ws:// or wss://"),
    ("'ws://[::1]:8090'", "IPv6 literal, which mod_audio_stream rejects"),
    ("ws://127.0.0.1:8090?x=1", "has a query or fragment"),
    ("ws://bad_host:8090", "invalid host 'bad_host'"),
    ("ws://host:80a", "invalid port '80a'"),
])
def test_media_url_follows_mod_audio_stream_rules(tmp_path: Path, url: str,
                                                  problem_part: str) -> None:
    err = error_of(setup(tmp_path, f"routing: {{default: ava}}\nmedia:\n  url: {url}\n"))
    assert err.key == "media.url" and problem_part in err.problem


def test_ipv6_media_listen_needs_an_explicit_url(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  listen: '[::1]:8090'\n"))
    assert err.key == "media.url"
    assert err.fix == "set media.url to ws://<IPv4 address or hostname>:<port>"


def test_wss_media_url_warns_about_tls(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\nmedia:\n  url: wss://h:443\n"))
    assert any("-DUSE_TLS=ON" in w for w in config.warnings)


def test_openai_s2s_is_rejected_with_the_reason(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: openai_s2s\n"))
    assert err.key == "media.module"
    assert err.problem == ("jambonz's mod_openai_s2s speaks only the beta Realtime protocol, "
                           "shut down by OpenAI on 2026-05-12")
    assert err.fix == "use module: audio_stream (the community mod_audio_stream)"


def test_unknown_modules_are_rejected(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: audio_stram\n"))
    assert (err.problem, err.fix) == ("unknown media module 'audio_stram'",
                                      "did you mean 'audio_stream'?")


def test_g711_at_16k_warns_about_resampling(tmp_path: Path) -> None:
    text = "routing: {default: ava}\nrealtime:\n  audio_format: pcmu\nmedia:\n  rate: %d\n"
    config = load_config(setup(tmp_path, text % 16000))
    assert len(config.warnings) == 1 and "media.rate: 8000" in config.warnings[0]
    assert load_config(setup(tmp_path, text % 8000)).warnings == ()


@pytest.mark.parametrize("text, key, problem_part", [
    ("realtime:\n  api_key_env: sk-proj-123\n", "realtime.api_key_env",
     "looks like an API key itself"),
    ("realtime:\n  api_key_env: 'MY KEY'\n", "realtime.api_key_env",
     "is not an environment variable name"),
    ("realtime:\n  url: https://api.openai.com/v1/realtime\n", "realtime.url", "must start with"),
    ("realtime:\n  url: wss://x/v1/realtime?model=m\n", "realtime.url", "has a query"),
    ("realtime:\n  model: 'gpt realtime'\n", "realtime.model", "is not a model name"),
])
def test_realtime_section(tmp_path: Path, text: str, key: str, problem_part: str) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\n" + text))
    assert err.key == key and problem_part in err.problem


def test_api_key_is_read_from_the_environment_and_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\n"
                                         "realtime:\n  api_key_env: CALLBOT_TEST_KEY\n"))
    monkeypatch.delenv("CALLBOT_TEST_KEY", raising=False)
    assert config.api_key() is None
    monkeypatch.setenv("CALLBOT_TEST_KEY", "sk-secret-value")
    assert config.api_key() == "sk-secret-value"
    assert "sk-secret-value" not in repr(config) and "sk-secret-value" not in str(config)


def test_routing_default_is_required(tmp_path: Path) -> None:
    path = setup(tmp_path, "log_level: info\n")
    assert str(error_of(path)) == (f"{path}: routing.default: is required "
                                   "(fix: add 'default: <persona name>' under routing)")


def test_routing_names_must_be_loaded_personas(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing: {default: avaa}\n"))
    assert (err.key, err.problem, err.fix) == \
        ("routing.default", "persona 'avaa' does not exist (loaded: ava)", "did you mean 'ava'?")
    err = error_of(setup(tmp_path, "routing:\n  default: ava\n  destinations:\n"
                                   "    '100': zed\n"))
    assert err.key == "routing.destinations.100" and "'zed' does not exist" in err.problem


def test_destination_numbers_must_be_quoted(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing:\n  default: ava\n  destinations:\n"
                                   "    +15551234: ava\n"))
    assert err.key == "routing.destinations.15551234"
    assert "must be a quoted string" in err.problem and "drops '+'" in err.problem
    assert err.fix == ("put quotes around it, exactly as dialled: '15551234': <persona> "
                       "(YAML read it as the number 15551234)")


def test_personas_directory_problems(tmp_path: Path) -> None:
    path = setup(tmp_path, "routing: {default: ava}\npersonas: nowhere\n")
    err = error_of(path)
    assert err.key == "personas" and err.problem == \
        f"directory {tmp_path / 'nowhere'} does not exist"
    (tmp_path / "empty").mkdir()
    path.write_text("routing: {default: ava}\npersonas: empty\n")
    assert "holds no persona file" in error_of(path).problem


def test_persona_errors_name_the_persona_file(tmp_path: Path) -> None:
    path = setup(tmp_path, "routing: {default: ava}\n",
                 {"ava": None, "bob": "name: robert\ninstructions: hi\n"})
    err = error_of(path)
    assert err.file == str(tmp_path / "personas" / "bob.yaml") and err.key == "name"
    assert err.fix == "write name: bob, or rename the file to robert.yaml"


def test_one_error_type_for_config_and_persona_files(tmp_path: Path) -> None:
    """``except ConfigError`` (from callbot.config, as the CLI writes it) catches persona errors."""
    from callbot import config, config_reader, persona

    assert config.ConfigError is config_reader.ConfigError is persona.ConfigError
    assert (config.Section, config.read_yaml, config.suggest, config.describe) == (
        config_reader.Section, config_reader.read_yaml, config_reader.suggest,
        config_reader.describe)
    path = setup(tmp_path, "routing: {default: ava}\n",
                 {"ava": MINIMAL_PERSONA.format(name="ava") + "on_model_failure: {then: transfr}\n"})
    err = error_of(path)
    assert (err.file, err.key, err.fix) == (str(tmp_path / "personas" / "ava.yaml"),
                                            "on_model_failure.then", "did you mean 'transfer'?")


def test_yml_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    path = setup(tmp_path, "routing: {default: ava}\n")
    (tmp_path / "personas" / "old.yml").write_text(MINIMAL_PERSONA.format(name="old"))
    config = load_config(path)
    assert set(config.personas) == {"ava"}
    assert config.warnings == (f"{tmp_path / 'personas' / 'old.yml'} is ignored: persona files "
                               "must end in .yaml",)


def test_records_must_be_a_directory_when_it_exists(tmp_path: Path) -> None:
    path = setup(tmp_path, "routing: {default: ava}\nrecords: rec\n")
    (tmp_path / "rec").write_text("")
    assert error_of(path).key == "records"


def test_file_and_yaml_problems(tmp_path: Path) -> None:
    err = error_of(tmp_path / "missing.yaml")
    assert (err.key, err.problem) == ("(file)", "does not exist")
    path = setup(tmp_path, "routing:\n  default: ava\n esl: [\n")
    err = error_of(path)
    assert err.key.startswith("line ") and err.problem.startswith("YAML syntax error")
    path.write_text("- a\n- b\n")
    assert error_of(path).key == "(top level)"


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_config(setup(tmp_path, "routing: {default: ava}\nlog_level: DEBUG\n")) \
        .log_level == "debug"


# --- routing precedence (callbot.core.routing) -------------------------------------------------

def routed(tmp_path: Path, variables: dict[str, str], destination: str) -> tuple[str | None, str,
                                                                                  str]:
    config = load_config(setup(tmp_path, "routing:\n  default: ava\n  destinations:\n"
                                         "    '2000': bob\n", {"ava": None, "bob": None,
                                                               "cid": None}))
    decision = select_persona(variables, destination, config.routing, config.personas)
    return (decision.persona.name if decision.persona else None, decision.rule, decision.note)


def test_routing_channel_variable_wins(tmp_path: Path) -> None:
    assert routed(tmp_path, {"callbot_persona": "cid"}, "2000") == \
        ("cid", "variable", "channel variable callbot_persona=cid")


def test_routing_destination_then_default(tmp_path: Path) -> None:
    assert routed(tmp_path, {}, "2000") == ("bob", "destination", "destination 2000 -> bob")
    assert routed(tmp_path, {"callbot_persona": ""}, "3000") == \
        ("ava", "default", "default persona ava")


def test_routing_unknown_variable_falls_through_with_a_note(tmp_path: Path) -> None:
    name, rule, note = routed(tmp_path, {"callbot_persona": "zed"}, "2000")
    assert (name, rule) == ("bob", "destination")
    assert note.startswith("channel variable callbot_persona=zed names no loaded persona")
    assert note.endswith("destination 2000 -> bob")


def test_routing_without_the_default_loaded_returns_none(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\n"))
    decision = select_persona({}, "1", config.routing, {})
    assert (decision.persona, decision.rule) == (None, "default")
    assert decision.note == "default persona ava is not loaded"


def test_openai_module_takes_the_key_from_freeswitch_globals_by_default(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: openai_audio_stream\n"))
    assert config.media.model_in_freeswitch
    assert config.media.api_key_from == "global"
    assert config.media.playback == "file"


def test_openai_module_refuses_g711_and_stream_playback(tmp_path: Path) -> None:
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: openai_audio_stream\n"
                                   "realtime:\n  audio_format: pcmu\n"))
    assert err.key.endswith("audio_format") and "PCM16 at 24 kHz only" in err.problem
    assert "pcm16" in err.fix
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: openai_audio_stream\n"
                                   "  playback: stream\n"))
    assert err.key.endswith("playback") and "plays the model's audio itself" in err.problem


def test_stream_playback_and_key_source_values_are_checked(tmp_path: Path) -> None:
    config = load_config(setup(tmp_path, "routing: {default: ava}\nmedia:\n  playback: stream\n"))
    assert config.media.playback == "stream" and not config.media.model_in_freeswitch
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  playback: files\n"))
    assert err.key.endswith("playback")
    err = error_of(setup(tmp_path, "routing: {default: ava}\nmedia:\n  module: openai_audio_stream\n"
                                   "  api_key_from: env\n"))
    assert err.key.endswith("api_key_from")
