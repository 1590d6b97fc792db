"""The node: its home directory now; networking and the daemon come next."""

from loomdb.node.home import NodeHome, default_home

__all__ = ["NodeHome", "default_home"]
