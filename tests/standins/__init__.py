"""Stand-ins for the model providers' APIs, so the real vendor CLIs run headless on loopback.

Each stand-in serves TLS for its provider's real host names with a leaf of a test CA, checks the
bearer, and answers in the provider's own wire format as a per-request script says.

* :mod:`~tests.standins.ca`: the test CA and its leaf certificates.
* :mod:`~tests.standins.server`: one ASGI app served over TLS (uvicorn).
* :mod:`~tests.standins.scenarios`: ``Scenario`` (answer, tool_call, rate_limited, unauthorized,
  dropped) and the ``Script`` that hands one to each model request.
* :mod:`~tests.standins.recording`: ``RecordedRequest``, what a stand-in saw.
* :mod:`~tests.standins.standin`: the base every provider's stand-in shares.
* :mod:`~tests.standins.anthropic`, :mod:`~tests.standins.openai`, :mod:`~tests.standins.gemini`:
  the three providers.
* :mod:`~tests.standins.vendors`: how each CLI is run (argv, environment, credential).
* :mod:`~tests.standins.rig`: stand-in + CA + egress proxy, and the CLI run through them.
* :mod:`~tests.standins.headless`: reading the CLIs' headless JSON output in tests.
* :mod:`~tests.standins.capture`: ``python -m tests.standins.capture`` writes tests/data/runs.
"""
