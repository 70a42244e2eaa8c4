"""End-to-end tests share the VM layer's failure report hook (the session state dir with its
templates, vm_state_dir, comes from tests/conftest.py), and the test OAuth server: a session
fixture, taken here so that it is started once, not once per module that imports it."""

from tests.e2e.flow_fixtures import e2e_oidc
from tests.vm.conftest import pytest_runtest_makereport

__all__ = ["e2e_oidc", "pytest_runtest_makereport"]
