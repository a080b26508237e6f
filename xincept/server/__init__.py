"""Coordinating side: ServerApp phases, strategies, checkpoints, reports and the `xincept-server` CLI."""
