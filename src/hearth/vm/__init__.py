"""The VM layer: one backend Protocol, value types, lifecycle states and readiness."""
