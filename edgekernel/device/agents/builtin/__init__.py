"""The agents edgekernel ships, registered by entry point like any other (see pyproject.toml)."""
