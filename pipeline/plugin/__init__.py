"""The plugin contract: stages, artifacts, parameter schemas, fields, the entry-point registry and the import allow-list."""
