"""Servers and the per-call greenlet: where sockets, greenlets and queues are owned."""
