"""Sync: reconciliation, the wire protocol, and pull/push/sync between any two stores.

The protocol core here is sans-IO: it imports no asyncio, trio or sockets.
"""
