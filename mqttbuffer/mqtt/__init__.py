"""The MQTT side: broker connection settings, the persistent client id, and the broker probe."""
