"""Product-grade fakes for tests, the demo and users' own persona tests.

- :mod:`callbot.testing.fake_freeswitch` — FreeSWITCH's outbound socket, a channel and mod_audio_stream.
- :mod:`callbot.testing.fake_realtime` — an OpenAI Realtime (GA) server with energy VAD and scripted answers.
- :mod:`callbot.testing.realtime_schema` — strict validation of client events against the ``openai`` package's GA types.
- :mod:`callbot.testing.signals` — synthetic audio and the analysis helpers the tests use.
"""
