"""Hospital side: ClientApp handlers, local training and evaluation, and the `xincept-client` CLI."""
