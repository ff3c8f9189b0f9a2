"""Transports: codecs, the ZAP endpoint, the REST routes and API-key authentication. They know
nothing of SQL; everything they decide is decided in calls.py, the same for both."""
