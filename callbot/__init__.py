"""callbot: an AI voice agent for FreeSWITCH (outbound Event Socket + mod_audio_stream + OpenAI Realtime GA)."""
__version__ = "0.1.0"
