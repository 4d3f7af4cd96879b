"""voice-agent: a headless, MQTT-connected edge agent that turns sound into messages."""

__version__ = "0.1.0"
