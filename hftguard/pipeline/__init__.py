"""Pipeline stages as plain functions: the CLI calls them, tests call them directly."""
