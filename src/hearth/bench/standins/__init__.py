"""Stand-ins for the model providers' APIs, so the real vendor CLIs run headless on loopback.

Each stand-in serves TLS for its provider's real host names with a leaf of a CA made for the
purpose, checks the bearer, and answers in the provider's own wire format as a per-request
script says. ``hearth bench run`` measures runs against them, and the tests run the CLIs against
them (the host-side rig and the capture tool stay with the test suite).

* :mod:`~hearth.bench.standins.ca`: the test CA and its leaf certificates.
* :mod:`~hearth.bench.standins.server`: one ASGI app served over TLS (uvicorn).
* :mod:`~hearth.bench.standins.scenarios`: ``Scenario`` (answer, tool_call, rate_limited,
  unauthorized, dropped) and the ``Script`` that hands one to each model request.
* :mod:`~hearth.bench.standins.recording`: ``RecordedRequest``, what a stand-in saw.
* :mod:`~hearth.bench.standins.standin`: the base every provider's stand-in shares.
* :mod:`~hearth.bench.standins.anthropic`, :mod:`~hearth.bench.standins.openai`,
  :mod:`~hearth.bench.standins.gemini`: the three providers.
* :mod:`~hearth.bench.standins.vendors`: how each CLI is run (argv, environment, credential).
* :mod:`~hearth.bench.standins.documents`: credential documents with made-up tokens.
"""
