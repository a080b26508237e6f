"""Science code shared by server and client. Never imports the Flower runtime."""
