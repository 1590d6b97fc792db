"""Replication between nodes: passive (gossip), active (replicators), head exchange.

Everything here follows the node's store through its receipt log
(:class:`~loomdb.replication.feed.EntryFeed`): a follower keeps a cursor (a
``seq`` of :meth:`ContentAddressedStore.scan`), persisted when it must survive a
restart, so a restart or an outage never loses what it had to send.
"""
