"""The model transport: callbot's own WebSocket client to a Realtime (GA) server."""
