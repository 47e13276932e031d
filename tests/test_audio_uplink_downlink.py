"""Uplink (caller -> model texts) and Downlink (model deltas -> playable PCM), end to end on bytes.

What is asserted is what the model or the caller would notice: valid client events carrying the
right amount of audio at the right pitch, no drift, no lost tail, no byte misalignment.
"""
from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from callbot.audio.downlink import Downlink
from callbot.audio.pcm import (
    ModelAudioFormat, alaw_to_lin, bytes_to_ms, lin_to_alaw, lin_to_ulaw, ms_to_bytes, ulaw_to_lin,
)
from callbot.audio.resample import Resampler
from callbot.audio.uplink import Uplink
from callbot.audio.wav import WavFormatError, read_wav, wav_bytes, write_wav
from callbot.testing.signals import dominant_frequency, goertzel_power, speechlike, tone

CANDIDATES = [300.0, 440.0, 700.0, 1000.0, 1300.0, 2000.0, 3000.0]


def frames(pcm: bytes, rate: int, ms: float = 20.0) -> list[bytes]:
    size = ms_to_bytes(ms, rate)
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def decode_append(text: str) -> bytes:
    """Parse an Uplink text as the server would; return the audio bytes it carries."""
    event = json.loads(text)
    assert event["type"] == "input_audio_buffer.append"
    assert set(event) == {"type", "audio"}
    return base64.b64decode(event["audio"], validate=True)


def run_uplink(uplink: Uplink, chunks: Sequence[bytes | bytearray]) -> list[bytes]:
    texts = [uplink.feed(c) for c in chunks] + [uplink.flush()]
    return [decode_append(t) for t in texts if t is not None]


def middle(pcm: bytes, rate: int, edge_ms: float = 100.0) -> bytes:
    edge = ms_to_bytes(edge_ms, rate)
    return pcm[edge:len(pcm) - edge]


def deltas(pcm: bytes, rate: int, ms: float = 100.0) -> list[str]:
    return [base64.b64encode(c).decode("ascii") for c in frames(pcm, rate, ms)]


@pytest.fixture
def shared_audio() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
    if not path.is_dir():
        pytest.skip("../shared/audio is not available")
    return path


# --- Uplink ----------------------------------------------------------------------------------

@pytest.mark.parametrize("media_rate", [8000, 16000])
def test_uplink_pcm16_sends_the_callers_tone_at_24k_one_append_per_frame(media_rate: int) -> None:
    uplink = Uplink(media_rate, "pcm16")
    chunks = frames(tone(1000, 1000, media_rate), media_rate)
    audio = run_uplink(uplink, chunks)
    assert uplink.appends_out == len(audio) == len(chunks)              # nothing left for flush
    assert all(abs(len(a) - 960) <= 4 for a in audio)                    # 20 ms at 24 kHz
    pcm = b"".join(audio)
    assert abs(bytes_to_ms(len(pcm), 24000) - 1000) < 0.2
    assert dominant_frequency(middle(pcm, 24000), 24000, CANDIDATES) == 1000.0
    assert uplink.frames_in == len(chunks) and uplink.bytes_in == len(tone(1000, 1000, media_rate))


def test_uplink_pcmu_at_8k_is_plain_g711_of_the_frames() -> None:
    pcm = tone(700, 1000, 8000)
    audio = run_uplink(Uplink(8000, "pcmu"), frames(pcm, 8000))
    assert all(len(a) == 160 for a in audio)
    assert b"".join(audio) == lin_to_ulaw(pcm)


def test_uplink_pcma_at_8k_is_plain_g711_of_the_frames() -> None:
    pcm = tone(700, 1000, 8000)
    assert b"".join(run_uplink(Uplink(8000, "pcma"), frames(pcm, 8000))) == lin_to_alaw(pcm)


@pytest.mark.parametrize("fmt,decode", [("pcmu", ulaw_to_lin), ("pcma", alaw_to_lin)])
def test_uplink_g711_at_16k_downsamples_to_8k_first(fmt: ModelAudioFormat,
                                                    decode: Callable[[bytes], bytes]) -> None:
    audio = b"".join(run_uplink(Uplink(16000, fmt), frames(tone(1000, 1000, 16000), 16000)))
    assert abs(len(audio) - 8000) <= 16                                   # 1 s at 8 kHz, 1 byte/sample
    assert dominant_frequency(middle(decode(audio), 8000), 8000, CANDIDATES) == 1000.0


def test_uplink_batches_until_batch_ms_of_caller_audio() -> None:
    uplink = Uplink(8000, "pcmu", batch_ms=100)
    results = [uplink.feed(c) for c in frames(tone(440, 200, 8000), 8000)]
    assert results[:4] == [None] * 4 and results[5:9] == [None] * 4
    fifth, tenth = results[4], results[9]
    assert fifth is not None and tenth is not None
    assert len(decode_append(fifth)) == 800 and len(decode_append(tenth)) == 800
    assert uplink.flush() is None


def test_uplink_accepts_frames_of_any_ptime() -> None:
    uplink = Uplink(16000, "pcm16", batch_ms=20)
    thirty_ms = frames(tone(1000, 600, 16000), 16000, ms=30)
    texts = [uplink.feed(c) for c in thirty_ms]
    sent = [t for t in texts if t is not None]
    assert len(sent) == len(texts)                                       # each frame >= batch
    assert abs(sum(len(decode_append(t)) for t in sent) - ms_to_bytes(600, 24000)) <= 4


@pytest.mark.parametrize("media_rate,fmt", [(8000, "pcmu"), (8000, "pcm16"), (16000, "pcm16"), (16000, "pcmu")])
def test_uplink_odd_sized_frames_keep_sample_alignment(media_rate: int, fmt: ModelAudioFormat) -> None:
    pcm = speechlike(1000, media_rate, seed=3)
    aligned = b"".join(run_uplink(Uplink(media_rate, fmt), frames(pcm, media_rate)))
    odd_sizes = [321, 319, 641, 1, 639, 3, 317]
    chunks: list[bytearray] = []
    pos = 0
    while pos < len(pcm):
        size = odd_sizes[len(chunks) % len(odd_sizes)]
        chunks.append(bytearray(pcm[pos:pos + size]))                    # gevent-websocket may hand bytearrays
        pos += size
    assert b"".join(run_uplink(Uplink(media_rate, fmt), chunks)) == aligned


def test_uplink_text_is_exactly_the_client_event() -> None:
    text = Uplink(8000, "pcmu").feed(b"\x00\x00" * 160)
    assert text is not None
    assert text == '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(b"\xff" * 160).decode() + '"}'


def test_uplink_flush_sends_the_partial_batch_and_reset_drops_it() -> None:
    uplink = Uplink(8000, "pcmu", batch_ms=100)
    assert uplink.feed(tone(440, 20, 8000)) is None
    text = uplink.flush()
    assert text is not None and len(decode_append(text)) == 160
    assert uplink.flush() is None
    uplink.feed(tone(440, 20, 8000))
    uplink.reset()
    assert uplink.flush() is None
    assert uplink.appends_out == 1


@pytest.mark.parametrize("media_rate,fmt", [(8000, "mp3"), (24000, "pcmu"), (44100, "pcm16")])
def test_uplink_refuses_unsupported_combinations(media_rate: int, fmt: ModelAudioFormat) -> None:
    with pytest.raises(ValueError):
        Uplink(media_rate, fmt)


def test_uplink_cost_per_frame_is_printed() -> None:
    configs: list[tuple[int, ModelAudioFormat]] = [(8000, "pcm16"), (16000, "pcm16"), (8000, "pcmu"), (16000, "pcmu")]
    for media_rate, fmt in configs:
        chunks = frames(speechlike(5000, media_rate, seed=4), media_rate)
        uplink = Uplink(media_rate, fmt)
        start = time.perf_counter()
        for c in chunks:
            uplink.feed(c)
        per_frame = (time.perf_counter() - start) * 1e6 / len(chunks)
        print(f"Uplink {media_rate} Hz -> {fmt}: {per_frame:.1f} us per 20 ms frame")
        assert uplink.appends_out == len(chunks)


def test_uplink_carries_a_real_speech_clip(shared_audio: Path) -> None:
    pcm, rate = read_wav(shared_audio / "caller_hello.wav")
    audio = b"".join(run_uplink(Uplink(rate, "pcm16"), frames(pcm, rate)))
    assert abs(bytes_to_ms(len(audio), 24000) - bytes_to_ms(len(pcm), rate)) < 0.2


# --- Downlink --------------------------------------------------------------------------------

@pytest.mark.parametrize("media_rate", [8000, 16000])
def test_downlink_pcm16_plays_the_models_tone_for_exactly_its_duration(media_rate: int) -> None:
    downlink = Downlink("pcm16", media_rate)
    assert downlink.play_rate == media_rate
    out = b"".join(downlink.feed_b64(d) for d in deltas(tone(1000, 2000, 24000), 24000))
    assert bytes_to_ms(len(out), media_rate) < 2000                       # soxr holds some back ...
    out += downlink.finish()                                               # ... until the end
    assert abs(len(out) // 2 - 2 * media_rate) <= 1
    assert dominant_frequency(middle(out, media_rate), media_rate, CANDIDATES) == 1000.0
    assert downlink.ms_in == pytest.approx(2000) and downlink.ms_out == pytest.approx(2000, abs=0.2)


@pytest.mark.parametrize("media_rate", [8000, 16000])
def test_downlink_g711_is_decoded_at_8k_without_resampling(media_rate: int) -> None:
    pcm = tone(1000, 500, 8000)
    ulaw = lin_to_ulaw(pcm)
    downlink = Downlink("pcmu", media_rate)
    assert downlink.play_rate == 8000
    out = b"".join(downlink.feed_b64(base64.b64encode(ulaw[i:i + 800]).decode())   # 100 ms deltas
                   for i in range(0, len(ulaw), 800))
    assert out == ulaw_to_lin(ulaw) and downlink.finish() == b""
    assert dominant_frequency(out, 8000, CANDIDATES) == 1000.0
    alaw = lin_to_alaw(pcm)
    assert Downlink("pcma", media_rate).feed_b64(base64.b64encode(alaw).decode()) == alaw_to_lin(alaw)


def test_downlink_responses_do_not_leak_into_each_other() -> None:
    downlink = Downlink("pcm16", 8000)
    for _ in range(3):
        out = b"".join(downlink.feed_b64(d) for d in deltas(speechlike(1300, 24000), 24000))
        out += downlink.finish()
        assert abs(len(out) // 2 - 1300 * 8) <= 1


def test_downlink_reset_on_barge_in_drops_the_tail() -> None:
    downlink = Downlink("pcm16", 16000)
    for d in deltas(speechlike(730, 24000), 24000):
        downlink.feed_b64(d)
    downlink.reset()
    out = b"".join(downlink.feed_b64(d) for d in deltas(tone(440, 500, 24000), 24000)) + downlink.finish()
    assert abs(len(out) // 2 - 8000) <= 1
    assert dominant_frequency(middle(out, 16000), 16000, CANDIDATES) == 440.0


def test_downlink_odd_byte_deltas_keep_sample_alignment() -> None:
    pcm = speechlike(1000, 24000, seed=6)
    even = Downlink("pcm16", 8000)
    reference = b"".join(even.feed_b64(d) for d in deltas(pcm, 24000)) + even.finish()
    odd = Downlink("pcm16", 8000)
    pieces = [pcm[i:i + 4801] for i in range(0, len(pcm), 4801)]
    out = b"".join(odd.feed_b64(base64.b64encode(p).decode()) for p in pieces) + odd.finish()
    assert len(out) == len(reference)
    assert dominant_frequency(middle(out, 8000), 8000, [150.0, 440.0, 1000.0]) \
        == dominant_frequency(middle(reference, 8000), 8000, [150.0, 440.0, 1000.0])


def test_downlink_does_not_alias_a_7khz_tone_into_the_phone_band() -> None:
    reference = Downlink("pcm16", 8000)
    ref = b"".join(reference.feed_b64(d) for d in deltas(tone(1000, 1000, 24000), 24000)) + reference.finish()
    downlink = Downlink("pcm16", 8000)
    out = b"".join(downlink.feed_b64(d) for d in deltas(tone(7000, 1000, 24000), 24000)) + downlink.finish()
    alias = goertzel_power(middle(out, 8000), 8000, 1000.0)
    level = 10 * math.log10(alias / goertzel_power(middle(ref, 8000), 8000, 1000.0) + 1e-30)
    assert level < -60.0


@pytest.mark.parametrize("media_rate", [24000, 11025])
def test_downlink_refuses_rates_the_module_cannot_play_raw(media_rate: int) -> None:
    with pytest.raises(ValueError):
        Downlink("pcm16", media_rate)


def test_downlink_rejects_malformed_base64() -> None:
    with pytest.raises(ValueError):
        Downlink("pcmu", 8000).feed_b64("abc")


# --- WAV -------------------------------------------------------------------------------------

def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = tone(440, 250, 16000)
    write_wav(tmp_path / "t.wav", pcm, 16000)
    assert read_wav(tmp_path / "t.wav") == (pcm, 16000)
    blob = wav_bytes(pcm, 8000)
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE" and len(blob) == 44 + len(pcm)
    (tmp_path / "m.wav").write_bytes(blob)
    assert read_wav(tmp_path / "m.wav") == (pcm, 8000)


def test_wav_refuses_stereo_and_non_wav(tmp_path: Path) -> None:
    import wave
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00" * 400)
    with pytest.raises(WavFormatError, match="2 channel"):
        read_wav(tmp_path / "s.wav")
    (tmp_path / "x.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(WavFormatError):
        read_wav(tmp_path / "x.wav")


def test_shared_clips_are_mono_16k(shared_audio: Path) -> None:
    pcm, rate = read_wav(shared_audio / "bot_greeting.wav")
    assert rate == 16000 and len(pcm) > ms_to_bytes(1000, rate)
    resampler = Resampler(16000, 8000)
    out = resampler.process(pcm) + resampler.flush()
    assert abs(len(out) * 2 - len(pcm)) <= 2
