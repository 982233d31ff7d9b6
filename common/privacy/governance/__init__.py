"""What a party decides and records about privacy (common/privacy/__init__.py); uses the mechanisms."""
