"""The Router: authenticates, routes across provider adapters with failover, and settles usage."""
