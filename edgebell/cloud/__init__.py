"""Cloud sync over MQTT: signed token lists in; rings, deliveries, feedback and status out."""
