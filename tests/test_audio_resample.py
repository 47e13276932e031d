"""Resampler: what a listener (or the model) would notice — pitch, level, length, aliasing, clicks.

Also checks the measuring instruments themselves (:mod:`callbot.testing.signals`), since every
audio test relies on them.
"""
from __future__ import annotations

import math

import pytest

from callbot.audio.pcm import bytes_to_ms, ms_to_bytes
from callbot.audio.resample import Resampler
from callbot.testing import signals
from callbot.testing.signals import dominant_frequency, goertzel_power, rms_dbfs, speechlike, tone

CONVERSIONS = [(8000, 24000), (16000, 24000), (16000, 8000), (24000, 8000), (24000, 16000)]
CANDIDATES = [300.0, 440.0, 700.0, 1000.0, 1300.0, 2000.0, 3000.0]


def stream(resampler: Resampler, pcm: bytes, rate: int, frame_ms: float = 20.0) -> bytes:
    """Feed ``pcm`` in frames of ``frame_ms`` and flush, as a caller of the class would."""
    size = ms_to_bytes(frame_ms, rate)
    out = [resampler.process(pcm[i:i + size]) for i in range(0, len(pcm), size)]
    return b"".join(out) + resampler.flush()


def middle(pcm: bytes, rate: int, edge_ms: float = 100.0) -> bytes:
    edge = ms_to_bytes(edge_ms, rate)
    return pcm[edge:len(pcm) - edge]


def level_db(pcm: bytes, rate: int, freq: float) -> float:
    return 10 * math.log10(goertzel_power(pcm, rate, freq) + 1e-30)


@pytest.mark.parametrize("in_rate,out_rate", CONVERSIONS)
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_a_tone_comes_out_at_the_same_pitch_and_level(in_rate: int, out_rate: int, freq: float) -> None:
    out = middle(stream(Resampler(in_rate, out_rate), tone(freq, 1000, in_rate), in_rate), out_rate)
    assert dominant_frequency(out, out_rate, CANDIDATES) == freq
    source_level = level_db(tone(freq, 800, out_rate), out_rate, freq)
    # Linear interpolation (upsampling) droops toward the input Nyquist: ~3 dB at 3 kHz from
    # 8 kHz, ~1 dB at 3 kHz from 16 kHz. The filtered downsamplers are flat.
    upsampling_3k = out_rate > in_rate and freq == 3000.0
    tolerance = (4.0 if in_rate == 8000 else 1.5) if upsampling_3k else 0.5
    assert abs(level_db(out, out_rate, freq) - source_level) < tolerance


@pytest.mark.parametrize("in_rate,out_rate", CONVERSIONS)
def test_ten_seconds_streamed_are_ten_seconds_out(in_rate: int, out_rate: int) -> None:
    pcm = speechlike(10_000, in_rate)
    streamed = stream(Resampler(in_rate, out_rate), pcm, in_rate)
    one_shot = Resampler(in_rate, out_rate)
    whole = one_shot.process(pcm) + one_shot.flush()
    assert len(streamed) == len(whole)
    assert abs(bytes_to_ms(len(streamed), out_rate) - 10_000) <= 20.0
    assert abs(len(streamed) // 2 - 10 * out_rate) <= 1


@pytest.mark.parametrize("in_rate,out_rate", [(8000, 24000), (16000, 24000), (16000, 8000)])
def test_low_latency_engines_stream_exactly_like_one_shot_whatever_the_frame_size(in_rate: int, out_rate: int) -> None:
    pcm = speechlike(2000, in_rate, seed=2)
    one_shot = Resampler(in_rate, out_rate)
    whole = one_shot.process(pcm) + one_shot.flush()
    for frame_ms in (10.0, 20.0, 30.0):
        assert stream(Resampler(in_rate, out_rate), pcm, in_rate, frame_ms) == whole
    # Odd sample counts per call (e.g. 161 samples): phase and alignment survive.
    resampler = Resampler(in_rate, out_rate)
    out: list[bytes] = []
    pos, sizes = 0, [322, 2, 640, 158, 6, 1000]
    while pos < len(pcm):
        size = sizes[len(out) % len(sizes)]
        out.append(resampler.process(pcm[pos:pos + size]))
        pos += size
    assert b"".join(out) + resampler.flush() == whole


def test_upsampling_adds_no_latency_worth_a_frame() -> None:
    resampler = Resampler(8000, 24000)
    first = resampler.process(tone(1000, 20, 8000))
    assert len(first) >= ms_to_bytes(20, 24000) - 2 * 2        # at most 2 samples (0.08 ms) held back


def test_halfband_output_is_aligned_with_its_input() -> None:
    impulse = bytearray(ms_to_bytes(200, 16000))
    impulse[2 * 1000:2 * 1000 + 2] = (20000).to_bytes(2, "little", signed=True)
    out = signals.samples(stream(Resampler(16000, 8000), bytes(impulse), 16000))
    peak = max(range(len(out)), key=lambda i: abs(out[i]))
    assert peak == 500


def test_identity_returns_the_same_object() -> None:
    resampler = Resampler(16000, 16000)
    pcm = tone(1000, 20, 16000)
    assert resampler.engine == "identity"
    assert resampler.process(pcm) is pcm
    assert resampler.flush() == b""


def test_engine_choice_follows_the_direction() -> None:
    assert Resampler(8000, 24000).engine == "ratecv"
    assert Resampler(16000, 24000).engine == "ratecv"
    assert Resampler(16000, 8000).engine == "halfband"
    assert Resampler(24000, 8000).engine.startswith("soxr")
    assert Resampler(24000, 16000).engine.startswith("soxr")


def test_odd_byte_input_is_refused() -> None:
    with pytest.raises(ValueError):
        Resampler(24000, 8000).process(b"\x00\x01\x02")


@pytest.mark.parametrize("in_rate,out_rate", CONVERSIONS)
def test_after_flush_a_new_stream_starts_clean(in_rate: int, out_rate: int) -> None:
    first, second = speechlike(700, in_rate, seed=1), tone(1000, 500, in_rate)
    fresh = stream(Resampler(in_rate, out_rate), second, in_rate)
    reused = Resampler(in_rate, out_rate)
    stream(reused, first, in_rate)
    assert len(stream(reused, second, in_rate)) == len(fresh)


@pytest.mark.parametrize("in_rate,out_rate", CONVERSIONS)
def test_reset_drops_what_was_held_back(in_rate: int, out_rate: int) -> None:
    resampler = Resampler(in_rate, out_rate)
    resampler.process(speechlike(330, in_rate, seed=1))
    resampler.reset()
    again = stream(resampler, tone(1000, 500, in_rate), in_rate)
    assert abs(len(again) // 2 - out_rate // 2) <= 1
    assert dominant_frequency(middle(again, out_rate), out_rate, CANDIDATES) == 1000.0


# --- anti-aliasing (a quality requirement: the phone must not hear folded sibilants) ----------

@pytest.mark.parametrize("in_rate,out_rate,high,alias", [
    (24000, 8000, 7000.0, 1000.0),
    (24000, 8000, 5000.0, 3000.0),
    (24000, 16000, 11000.0, 5000.0),
    (16000, 8000, 5000.0, 3000.0),
])
def test_tones_above_nyquist_do_not_fold_back(in_rate: int, out_rate: int, high: float, alias: float) -> None:
    reference = level_db(middle(stream(Resampler(in_rate, out_rate), tone(1000, 1000, in_rate), in_rate),
                                out_rate), out_rate, 1000.0)
    out = middle(stream(Resampler(in_rate, out_rate), tone(high, 1000, in_rate), in_rate), out_rate)
    assert level_db(out, out_rate, alias) - reference < -60.0
    assert rms_dbfs(out) < rms_dbfs(tone(1000, 800, out_rate)) - 60.0


# --- the instruments -------------------------------------------------------------------------

def test_goertzel_reads_a_tone_level_in_dbfs() -> None:
    pcm = tone(1000, 500, 8000, amplitude=0.5)
    assert abs(level_db(pcm, 8000, 1000.0) - 20 * math.log10(0.5 / math.sqrt(2))) < 0.1
    assert level_db(pcm, 8000, 1500.0) < -80.0
    assert abs(rms_dbfs(pcm) - 20 * math.log10(0.5 / math.sqrt(2))) < 0.1


def test_speechlike_is_deterministic_loud_in_syllables_and_has_pauses() -> None:
    pcm = speechlike(3000, 8000, seed=7)
    assert pcm == speechlike(3000, 8000, seed=7) and pcm != speechlike(3000, 8000, seed=8)
    frames = [rms_dbfs(pcm[i:i + 320]) for i in range(0, len(pcm), 320)]
    assert sum(level > -30.0 for level in frames) > len(frames) // 3   # energy VAD fires
    pauses = signals.silent_runs(pcm, 8000, min_ms=100)
    assert pauses and all(150 - 2 <= length <= 350 + 2 for _, length in pauses)


def test_silent_runs_find_a_gap_to_the_millisecond() -> None:
    pcm = tone(440, 300, 8000) + signals.silence(57, 8000) + tone(440, 300, 8000)
    [(start, length)] = signals.silent_runs(pcm, 8000, min_ms=20)
    assert abs(start - 300) <= 1.0 and abs(length - 57) <= 2.0


@pytest.mark.parametrize("offset_ms", [0.0, 1234.5, 4321.125])
def test_find_signal_locates_a_clip_within_a_millisecond(offset_ms: float) -> None:
    needle = speechlike(1500, 8000, seed=9)
    haystack = bytearray(speechlike(6000, 8000, seed=5))
    at = 2 * int(offset_ms * 8)
    haystack[at:at + len(needle)] = needle
    found = signals.find_signal(bytes(haystack), needle, 8000)
    assert found is not None and abs(found - offset_ms) <= 1.0
    assert signals.find_signal(speechlike(6000, 8000, seed=5), needle, 8000) is None
