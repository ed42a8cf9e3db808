"""The HTTP API: an app factory and one controller module per resource."""
