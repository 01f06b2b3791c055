"""`make bench`: the gateway against its own database floor (see docs/performance.md)."""
