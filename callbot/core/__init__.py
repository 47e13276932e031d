"""The sans-I/O call core: events in, commands out; no sockets, no greenlets, no clock of its own."""
