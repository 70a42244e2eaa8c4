"""End-to-end tests share the VM layer's failure report hook (the session state dir with its
templates, vm_state_dir, comes from tests/conftest.py)."""

from tests.vm.conftest import pytest_runtest_makereport

__all__ = ["pytest_runtest_makereport"]
