"""Contracts every stage shares: settings, the event schema, the dataset layout, the feature logic, the CLI."""
