"""DP mechanisms and their mathematics (common/privacy/__init__.py): no policy, ledger or file here."""
