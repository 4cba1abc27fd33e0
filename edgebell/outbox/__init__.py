"""The durable outbox: notifications kept until Apple has answered for each phone."""
