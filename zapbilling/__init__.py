"""zapbilling: a usage-based billing service. Its operations are declared once, in
schemas/billing.zap, and served over the ZAP endpoint and REST alike."""

__version__ = "0.1.0"
