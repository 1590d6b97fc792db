"""Transports move sync frames between a client and a node; they never read them."""
