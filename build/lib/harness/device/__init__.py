"""The device under test from the host: the wire protocol, the host side of it, and real boards."""
