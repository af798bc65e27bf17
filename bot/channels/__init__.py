"""Chat transports: the only code that talks to a chat network."""
