"""Microsoft Sentinel connector for Pulumi Cloud and Pulumi ESC audit logs."""

__version__ = "1.0.0"
