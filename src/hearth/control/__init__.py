"""The controller's core: VM lifecycle with quotas, reconciliation, monitoring and a warm pool."""
