"""Home Assistant over the home's own MQTT broker: discovery and ring events."""
