"""The conformance suite: run with `pytest --pyargs nsa_conformance.suite --nsa-backend NAME`."""
