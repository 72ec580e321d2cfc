"""Test package: lets test modules share helpers (tests.tiny_models, tests.st_files)."""
