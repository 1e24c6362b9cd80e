"""The edge agent: applies the fleet's desired state on one site (cache, state, activation)."""
