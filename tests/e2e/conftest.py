"""End-to-end tests share the VM layer's session fixtures (state dir with templates)."""

from tests.vm.conftest import pytest_runtest_makereport, vm_state_dir

__all__ = ["pytest_runtest_makereport", "vm_state_dir"]
