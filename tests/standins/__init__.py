"""The test side of the provider stand-ins (which ship in :mod:`hearth.bench.standins`).

* :mod:`~tests.standins.rig`: stand-in + CA + egress proxy, and a vendor CLI run through them on
  the host.
* :mod:`~tests.standins.headless`: reading the CLIs' headless JSON output in tests.
* :mod:`~tests.standins.capture`: ``python -m tests.standins.capture`` writes tests/data/runs.
"""
