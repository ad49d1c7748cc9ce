"""Detection networks and the builders that turn a config into them."""
