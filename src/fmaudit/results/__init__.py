"""Assembling report.json: the audit over ensembles, provenance, the schema version."""

SCHEMA_VERSION = 1
