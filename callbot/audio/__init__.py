"""Audio: pure computation on bytes, no I/O. Stateful objects, one stream each.

- :mod:`callbot.audio.pcm` — the ``audioop`` import, G.711 helpers, PCM size/duration arithmetic.
- :mod:`callbot.audio.resample` — :class:`~callbot.audio.resample.Resampler`, streaming rate conversion.
- :mod:`callbot.audio.wav` — WAV files and in-memory WAV bytes (mono, 16-bit).
- :mod:`callbot.audio.uplink` — :class:`~callbot.audio.uplink.Uplink`: caller frames ->
  ``input_audio_buffer.append`` texts.
- :mod:`callbot.audio.downlink` — :class:`~callbot.audio.downlink.Downlink`: model audio deltas ->
  PCM at the play rate.

Nothing is re-exported here, so importing :mod:`callbot.audio.pcm` does not load soxr/numpy.
"""
