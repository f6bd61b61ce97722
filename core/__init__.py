"""Contracts every stage shares: settings, event schema, dataset layout, feature logic, the CLI."""
