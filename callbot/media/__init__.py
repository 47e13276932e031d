"""The media adapter: callbot's per-call WebSocket endpoint that mod_audio_stream connects to.

* :mod:`callbot.media.websocket_fixes`: gevent-websocket 0.10.1 corrected by subclassing.
* :mod:`callbot.media.endpoint`: ``MediaEndpoint`` (one server for all calls, one registration per call).
"""
