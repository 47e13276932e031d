"""Aliasing, passband flatness and cost of callbot's audio paths, against plain ``audioop.ratecv``.

Run from the repository root:  ``python bench/aliasing.py``

Downlink (model audio -> phone): 24 kHz tones go through :class:`callbot.audio.downlink.Downlink`
exactly as the product uses it (base64 deltas of 100 ms, then ``finish()``). A tone above the
target Nyquist should vanish; whatever folds back is measured (Goertzel, Hann window) at its alias
frequency, in dB relative to a 1 kHz passband tone of the same amplitude. "residual" is the whole
output's RMS against that reference (alias + every other leak + quantisation noise).
Uplink (caller -> model): the 16k -> 8k half-band decimator (G.711 model at 16 kHz media), same
measures; then the latency of each uplink conversion against soxr (audio held back behind real time
with 20 ms frames, and where an impulse comes out), the images left by upsampling, and the cost of
``Uplink.feed`` per frame. Costs are wall-clock microseconds on this machine (no assertions).
"""
from __future__ import annotations

import base64
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from callbot.audio.downlink import Downlink
from callbot.audio.pcm import ModelAudioFormat, audioop
from callbot.audio.resample import Resampler
from callbot.audio.uplink import Uplink
from callbot.testing.signals import goertzel_power, samples, speechlike, tone

Convert = Callable[[bytes], bytes]
"""Streams a whole signal through a fresh converter and returns the whole output."""

Process = Callable[[bytes], bytes]
"""One stream's ``process``: the next piece in, what is ready out."""

TONE_MS = 1200
EDGE_MS = 100           # output trimmed at both ends before measuring (filter start-up, tail)
AMPLITUDE = 0.3
REFERENCE_HZ = 1000.0


def chunks(pcm: bytes, rate: int, ms: int) -> list[bytes]:
    size = rate * ms // 1000 * 2
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def via_downlink(out_rate: int, delta_ms: int = 100) -> Convert:
    def run(pcm: bytes) -> bytes:
        downlink = Downlink("pcm16", out_rate)
        deltas = [base64.b64encode(c).decode("ascii") for c in chunks(pcm, 24000, delta_ms)]
        return b"".join(downlink.feed_b64(d) for d in deltas) + downlink.finish()
    return run


def via_resampler(in_rate: int, out_rate: int, frame_ms: int = 20) -> Convert:
    def run(pcm: bytes) -> bytes:
        resampler = Resampler(in_rate, out_rate)
        return b"".join(resampler.process(c) for c in chunks(pcm, in_rate, frame_ms)) + resampler.flush()
    return run


def via_ratecv(in_rate: int, out_rate: int, frame_ms: int = 20) -> Convert:
    def run(pcm: bytes) -> bytes:
        state = None
        out = []
        for c in chunks(pcm, in_rate, frame_ms):
            converted, state = audioop.ratecv(c, 2, 1, in_rate, out_rate, state)
            out.append(converted)
        return b"".join(out)
    return run


def fold(freq: float, rate: int) -> float:
    """Where a tone at ``freq`` lands after sampling at ``rate`` without filtering."""
    f = freq % rate
    return rate - f if f > rate / 2 else f


def trimmed(pcm: bytes, rate: int) -> bytes:
    edge = rate * EDGE_MS // 1000 * 2
    return pcm[edge:len(pcm) - edge]


def rms_db(pcm: bytes) -> float:
    """RMS in dBFS, in floating point (sub-LSB residues are reported, not rounded to silence)."""
    x = samples(pcm)
    mean_square = sum(v * v for v in x) / max(len(x), 1)
    return 10 * math.log10(mean_square / 32768.0 ** 2) if mean_square > 0 else -math.inf


def level_db(convert: Convert, in_rate: int, out_rate: int, freq: float, measure_at: float) -> tuple[float, float]:
    """(Goertzel level at ``measure_at``, RMS level) of the converted tone, both in dBFS."""
    out = trimmed(convert(tone(freq, TONE_MS, in_rate, AMPLITUDE)), out_rate)
    power = goertzel_power(out, out_rate, measure_at)
    return (10 * math.log10(power) if power > 0 else -math.inf), rms_db(out)


def us_per_20ms(convert: Convert, in_rate: int, seconds: float = 10.0) -> float:
    pcm = speechlike(seconds * 1000, in_rate, seed=3)
    start = time.perf_counter()
    convert(pcm)
    return (time.perf_counter() - start) * 1e6 / (seconds * 50)


def us_per_downlink_20ms(out_rate: int, seconds: float = 10.0, delta_ms: int = 100) -> float:
    """Downlink.feed_b64 alone (deltas pre-encoded, as they arrive from the model)."""
    deltas = [base64.b64encode(c).decode("ascii")
              for c in chunks(speechlike(seconds * 1000, 24000, seed=3), 24000, delta_ms)]
    downlink = Downlink("pcm16", out_rate)
    start = time.perf_counter()
    for d in deltas:
        downlink.feed_b64(d)
    downlink.finish()
    return (time.perf_counter() - start) * 1e6 / (seconds * 50)


def report(name: str, convert: Convert, in_rate: int, out_rate: int, high: list[float],
           passband: list[float], cost: float) -> None:
    ref_goertzel, ref_rms = level_db(convert, in_rate, out_rate, REFERENCE_HZ, REFERENCE_HZ)
    worst_alias, worst_at, worst_residual = -math.inf, 0.0, -math.inf
    cells = []
    for f in high:
        alias, rms = level_db(convert, in_rate, out_rate, f, fold(f, out_rate))
        alias -= ref_goertzel
        residual = rms - ref_rms
        cells.append(f"{f / 1000:g}k:{alias:6.1f}")
        if alias > worst_alias:
            worst_alias, worst_at = alias, f
        worst_residual = max(worst_residual, residual)
    flat = [f"{f:g}:{level_db(convert, in_rate, out_rate, f, f)[0] - ref_goertzel:+.2f}" for f in passband]
    print(f"{name:<34} {worst_alias:7.1f} dB @{worst_at / 1000:g}k  residual {worst_residual:6.1f} dB  "
          f"{cost:6.1f} us/20ms")
    print(f"{'':<34} alias by tone: {'  '.join(cells)}")
    print(f"{'':<34} passband dB:   {'  '.join(flat)}")


def soxr_stream(in_rate: int, out_rate: int, quality: str) -> Callable[[], Process]:
    """A factory of soxr streams fed bytes (numpy is used here, in the bench, only)."""
    import numpy
    import soxr

    def make() -> Process:
        stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

        def process(pcm: bytes) -> bytes:
            out: bytes = stream.resample_chunk(numpy.frombuffer(pcm, dtype=numpy.int16)).tobytes()
            return out
        return process
    return make


def callbot_stream(in_rate: int, out_rate: int) -> Callable[[], Process]:
    return lambda: Resampler(in_rate, out_rate).process


def latency(make: Callable[[], Process], in_rate: int, out_rate: int,
            frame_ms: int = 20) -> tuple[float, float]:
    """(worst audio held back behind real time, impulse delay), in ms, for 2 s in ``frame_ms`` frames."""
    process = make()
    impulse_at = in_rate // 10                                   # 100 ms in
    pcm = bytearray(2 * 2 * in_rate)
    pcm[2 * impulse_at:2 * impulse_at + 2] = (20000).to_bytes(2, "little", signed=True)
    held, fed, produced, out = 0.0, 0, 0, []
    for frame in chunks(bytes(pcm), in_rate, frame_ms):
        converted = process(frame)
        out.append(converted)
        fed += len(frame) // 2
        produced += len(converted) // 2
        held = max(held, (fed * out_rate / in_rate - produced) * 1000 / out_rate)
    x = samples(b"".join(out))
    peak = max(range(len(x)), key=lambda i: abs(x[i]))
    return held, (peak - impulse_at * out_rate / in_rate) * 1000 / out_rate


def latency_table() -> None:
    print("\nUplink latency, 20 ms frames (held back = worst shortfall of output against real time):")
    for in_rate, out_rate in ((8000, 24000), (16000, 24000), (16000, 8000)):
        rows = [(Resampler(in_rate, out_rate).engine + " (callbot)", callbot_stream(in_rate, out_rate))]
        rows += [(f"soxr-{q}", soxr_stream(in_rate, out_rate, q)) for q in ("LQ", "MQ")]
        for name, make in rows:
            held, delay = latency(make, in_rate, out_rate)
            print(f"  {in_rate // 1000:>2}k->{out_rate // 1000}k  {name:<20} held back {held:5.1f} ms"
                  f"   impulse delay {delay:+5.2f} ms")


def upsampling_images() -> None:
    print("\nUplink upsampling images (tone in, strongest image out, relative to the tone):")
    for in_rate, freq in ((8000, 1000.0), (8000, 3000.0), (16000, 1000.0), (16000, 7000.0)):
        out = trimmed(via_resampler(in_rate, 24000)(tone(freq, TONE_MS, in_rate, AMPLITUDE)), 24000)
        wanted = goertzel_power(out, 24000, freq)
        images = sorted({fold(k * in_rate + s * freq, 24000) for k in (1, 2) for s in (-1, 1)} - {freq})
        worst = max(10 * math.log10(goertzel_power(out, 24000, f) / wanted) for f in images)
        print(f"  {in_rate // 1000:>2}k->24k {freq / 1000:g} kHz tone: images {worst:6.1f} dB "
              f"(at {', '.join(f'{f / 1000:g}k' for f in images)})")


def uplink_costs(seconds: float = 10.0) -> None:
    print("\nUplink.feed per 20 ms frame (conversion + base64 + JSON text):")
    configs: list[tuple[int, ModelAudioFormat]] = [
        (8000, "pcm16"), (16000, "pcm16"), (8000, "pcmu"), (16000, "pcmu"), (16000, "pcma")]
    for media_rate, fmt in configs:
        frames = chunks(speechlike(seconds * 1000, media_rate, seed=4), media_rate, 20)
        uplink = Uplink(media_rate, fmt)
        start = time.perf_counter()
        for frame in frames:
            uplink.feed(frame)
        elapsed = (time.perf_counter() - start) * 1e6 / len(frames)
        print(f"  {media_rate:>5} Hz -> {fmt:<5}  {elapsed:5.1f} us/frame  ({uplink.appends_out} appends)")


def main() -> None:
    print(f"Python {platform.python_version()}  tones {TONE_MS} ms at amplitude {AMPLITUDE}, "
          f"alias relative to a {REFERENCE_HZ:g} Hz tone of the same amplitude\n")
    print(f"{'path':<34} {'worst alias':>18}  {'':>15}  {'cost':>13}")
    to8 = [4600.0, 5000.0, 6000.0, 7000.0, 9000.0, 11000.0]
    to16 = [8600.0, 9000.0, 10000.0, 11000.0]
    report("downlink pcm16 24k->8k (soxr MQ)", via_downlink(8000), 24000, 8000, to8,
           [300.0, 1000.0, 3000.0, 3400.0], us_per_downlink_20ms(8000))
    report("audioop.ratecv 24k->8k", via_ratecv(24000, 8000), 24000, 8000, to8,
           [300.0, 1000.0, 3000.0, 3400.0], us_per_20ms(via_ratecv(24000, 8000), 24000))
    report("downlink pcm16 24k->16k (soxr MQ)", via_downlink(16000), 24000, 16000, to16,
           [300.0, 1000.0, 3000.0, 7000.0], us_per_downlink_20ms(16000))
    report("audioop.ratecv 24k->16k", via_ratecv(24000, 16000), 24000, 16000, to16,
           [300.0, 1000.0, 3000.0, 7000.0], us_per_20ms(via_ratecv(24000, 16000), 24000))
    report("uplink 16k->8k (half-band FIR)", via_resampler(16000, 8000), 16000, 8000,
           [4600.0, 5000.0, 6000.0, 7000.0], [300.0, 1000.0, 3000.0, 3400.0],
           us_per_20ms(via_resampler(16000, 8000), 16000))
    report("audioop.ratecv 16k->8k", via_ratecv(16000, 8000), 16000, 8000,
           [4600.0, 5000.0, 6000.0, 7000.0], [300.0, 1000.0, 3000.0, 3400.0],
           us_per_20ms(via_ratecv(16000, 8000), 16000))
    latency_table()
    upsampling_images()
    uplink_costs()


if __name__ == "__main__":
    main()
