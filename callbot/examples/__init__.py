"""Example tool handlers used by the shipped persona and by ``callbot demo``."""
