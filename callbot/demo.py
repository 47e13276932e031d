"""``callbot demo``: one call through callbot's real server, with no FreeSWITCH and no API key.

The fake FreeSWITCH places a call; the fake Realtime model greets, answers the caller, and gets
interrupted (barge-in) during a long answer. ``--module`` picks what the fake FreeSWITCH has
installed: ``audio_stream`` (community mod_audio_stream: callbot relays audio and plays files),
``audio_stream_full_duplex`` (a build that plays raw streamAudio itself: callbot paces it) or
``openai_audio_stream`` (VoiSmart's module holds the model socket: callbot is the control plane). Prints a timeline with the
latencies callbot adds, and writes what the caller heard to a WAV file. Reads nothing outside
the package: the caller's voice is synthesized.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from .records import CallRecord
from .testing import signals
from .testing.fake_media import CallerAudio
from .testing.harness import DEFAULT_PERSONA, CallbotHarness
from .testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall

CHANNEL_RATE = 8000
GREETING = DEFAULT_PERSONA["greeting"]
ANSWER = ("Order 4 2 7 9 1 shipped yesterday from our warehouse in Leeds. It is with the courier now, "
          "and it should reach you on Thursday between nine and noon. You will get a text message "
          "with a tracking link as soon as the driver is on the way, and you can change the delivery "
          "slot from that message if Thursday does not suit you.")
CHECKING = "Let me check that for you."
MODULES = {"audio_stream": ("relay_file", "mod_audio_stream, files played over ESL"),
           "audio_stream_full_duplex": ("relay_stream", "a full-duplex mod_audio_stream build, raw streamAudio"),
           "openai_audio_stream": ("module", "mod_openai_audio_stream holding the model socket")}
GOODBYE = "Of course. A colleague will call you back today. Thank you for calling Acme, goodbye!"


def _script() -> RealtimeScript:
    lookup = ScriptedToolCall("lookup_order", {"order_number": "42791"})
    return RealtimeScript(
        responses=[ScriptedResponse(GREETING, audio_ms=3000),
                   ScriptedResponse(CHECKING, audio_ms=1200, tool_calls=[lookup]),
                   ScriptedResponse(ANSWER, audio_ms=9000),
                   ScriptedResponse(GOODBYE, audio_ms=3000, tool_calls=[ScriptedToolCall("end_call", {})])],
        user_transcripts=["Hi there. I would like to check the status of my order, please. It's 42791.",
                          "Wait, wait. Actually, can I talk to a real person instead?"])


def _caller() -> CallerAudio:
    return CallerAudio(segments=[(4.0, signals.speechlike(1800, CHANNEL_RATE, seed=1), CHANNEL_RATE),
                                 (11.0, signals.speechlike(1600, CHANNEL_RATE, seed=2), CHANNEL_RATE)],
                       hangup_at_s=30.0)


def main(args: argparse.Namespace | None = None) -> int:
    """Run the demo call; 0 on success, 2 for an unsupported option."""
    out = getattr(args, "out", None) or "callbot-demo.wav"
    module = getattr(args, "module", None) or "audio_stream"
    if module not in MODULES:
        print(f"callbot demo: unknown --module {module}; choose one of: {', '.join(MODULES)}")
        return 2
    path, label = MODULES[module]
    logging.getLogger().setLevel(logging.WARNING)
    print(f"callbot demo: callbot's real server between a fake FreeSWITCH ({label}) and a fake "
          "OpenAI Realtime model, all on 127.0.0.1.\n")
    options = {"ttfb_s": 0.35, "speed": 3.0}
    with CallbotHarness(script=_script(), realtime_options=options, channel_rate=CHANNEL_RATE,
                        media_path=path) as harness:
        call = harness.place_call(destination="9999", caller="+15551230000", caller_audio=_caller())
        record = harness.wait_record(call, timeout=40)
        call.wait_ended(5)
        call.write_heard_wav(out)
        heard_s = len(call.heard_pcm()) / 2 / CHANNEL_RATE
    print_timeline(record)
    print_latencies(record, options["ttfb_s"])
    print(f"\nWhat the caller heard ({heard_s:.1f} s, {CHANNEL_RATE} Hz): {out}")
    return 0


# --- output -------------------------------------------------------------------------------------

_LABELS = {
    "call.started": "FreeSWITCH connected ({channel}, answered={answered})",
    "model.connected": "model session open",
    "greeting.requested": "greeting requested (session.update + response.create)",
    "call.answered": "call answered",
    "media.connected": "mod_audio_stream connected to the media endpoint",
    "bot.first_audio": "model: first audio of {response_id}",
    "bot.first_chunk_sent": "first chunk sent to FreeSWITCH (streamAudio)",
    "bot.playback_started": "caller starts hearing the bot",
    "caller.speech_started": "caller starts speaking (model VAD)",
    "caller.speech_stopped": "caller stops speaking",
    "barge_in": "BARGE-IN: bot silenced + truncate at {heard_ms} ms heard + cancel={cancel_sent}",
    "tool.call": "tool {name}: ok={ok} in {duration_ms} ms -> {output}",
    "call.ending": "callbot ends the call: {reason} ({side})",
    "response.done": "response done: {status} {reason}",
    "call.hangup": "hangup: {cause}",
    "call.ended": "call released ({reason})",
}


def print_timeline(record: CallRecord) -> None:
    """The call, one line per step, times in seconds since FreeSWITCH connected."""
    print(f"call {record.call_uuid}  persona={record.persona}  caller={record.caller}  "
          f"destination={record.destination}\n")
    for entry in record.entries:
        kind = entry["kind"]
        if kind == "transcript":
            who = "bot   " if entry["role"] == "assistant" else "caller"
            print(f"  {entry['t']:7.3f}s  {who} said: \"{_short(entry['text'])}\"")
        elif kind in _LABELS:
            print(f"  {entry['t']:7.3f}s  {_LABELS[kind].format_map(_Blank(entry))}")


def print_latencies(record: CallRecord, model_ttfb_s: float) -> None:
    """The figures a telephony engineer asks first."""
    def t(kind: str, after: float = -1.0) -> float | None:
        return next((e["t"] for e in record.entries if e["kind"] == kind and e["t"] > after), None)

    print("\nlatencies")
    first_audio, first_chunk, heard = t("bot.first_audio"), t("bot.first_chunk_sent"), t("bot.playback_started")
    if first_audio is None and heard is not None:  # the module path: callbot never sees the audio
        print(f"  connect -> caller hears the greeting  {heard * 1000:6.0f} ms  "
              f"(model's own time to first audio: {model_ttfb_s * 1000:.0f} ms; FreeSWITCH plays it)")
    if None not in (first_audio, first_chunk, heard):
        print(f"  connect -> greeting audio sent        {first_chunk * 1000:6.0f} ms  "
              f"(model's own time to first audio: {model_ttfb_s * 1000:.0f} ms)")
        print(f"  model first audio -> chunk sent       {(first_chunk - first_audio) * 1000:6.0f} ms  "
              f"(the first chunk: 200 ms of audio on files, 100 ms on a stream)")
        print(f"  connect -> caller hears the greeting  {heard * 1000:6.0f} ms")
    stopped = t("caller.speech_stopped")
    if stopped is not None:
        reply, reply_heard = t("bot.first_audio", stopped), t("bot.playback_started", stopped)
        if reply is None and reply_heard is not None:
            print(f"  caller stops -> caller hears the bot  {(reply_heard - stopped) * 1000:6.0f} ms")
        if reply is not None and reply_heard is not None:
            print(f"  caller stops -> caller hears the bot  {(reply_heard - stopped) * 1000:6.0f} ms  "
                  f"(model: {(reply - stopped) * 1000:.0f} ms of it)")
    for barge in (e for e in record.entries if e["kind"] == "barge_in"):
        started = max((e["t"] for e in record.entries
                       if e["kind"] == "caller.speech_started" and e["t"] <= barge["t"]), default=barge["t"])
        print(f"  speech_started -> break/truncate/cancel decided {(barge['t'] - started) * 1000:5.1f} ms "
              f"(same event; bench/ measures the wire)")
    for tool in (e for e in record.entries if e["kind"] == "tool.call" and e.get("name") != "end_call"):
        answer = t("response.created", tool["t"])
        if answer is not None:
            print(f"  tool {tool['name']}: handler {tool['duration_ms']:.1f} ms, result -> next response "
                  f"{(answer - tool['t']) * 1000:.0f} ms")


class _Blank(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> Any:
        return ""


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
