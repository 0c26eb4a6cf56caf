"""mqttbuffer: a store-and-forward daemon from an MQTT broker to an HTTP API."""

__version__ = "0.1.0"
