"""Pushes to Apple over the HTTP/2 provider API: model, payload, auth, connection, client."""
