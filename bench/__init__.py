"""Benchmarks for voice-agent (issue #7): `python -m bench [--quick]`. See bench/run.py."""
