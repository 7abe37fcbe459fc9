"""Cross-framework checks: ``python -m crosscheck`` and the functions the tests share."""
