"""Retention: rows older than their table's policy move from the database to verified, compressed archive files
(``archive``), by ``his-gateway archive`` and on a daily schedule claimed by one instance (``schedule``); the
audit chain continues from the archived head."""
