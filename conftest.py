"""Shared by every test folder (tests/, bench/tests, studies/tests): only tests marked ``e2e``
launch ranks or jobs, and every launch's wall time is logged (see tests/launches.py)."""

pytest_plugins = ["tests.launches"]
