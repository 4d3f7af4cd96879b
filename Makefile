# Test entry points. `scripts/test` also installs the system packages and the venv; these assume
# both exist (.venv with `pip install -e .[test]`).
PYTHON ?= .venv/bin/python
PYTEST ?= $(PYTHON) -m pytest

.PHONY: test soak reliability homeassistant-test

# The whole suite in its CI form (the soak test included, at SOAK_SCALE=1: 500 requests, 50 files).
test:
	$(PYTEST) -q

# The long soak: 5,000 requests and 500 files with broker restarts and bad files; prints RSS, fds, threads.
soak:
	SOAK_SCALE=$${SOAK_SCALE:-10} $(PYTEST) -q -s -m soak tests/e2e/test_resources_stay_flat.py

# Faults, hostile input, access and the short soak (docs/reliability.md), with their figures printed.
reliability:
	$(PYTEST) -q -s tests/e2e/test_broker_outage.py tests/e2e/test_kill9_recovery.py \
	  tests/e2e/test_hung_summarizer_server.py tests/e2e/test_disk_full.py tests/e2e/test_config_file_faults.py \
	  tests/e2e/test_hostile_input.py tests/e2e/test_tls.py tests/e2e/test_broker_credentials.py \
	  tests/e2e/test_acl_confinement.py tests/e2e/test_command_allow_list.py tests/unit/test_no_shell.py \
	  tests/e2e/test_resources_stay_flat.py

# A real Home Assistant (2025.4 from PyPI, in .cache/homeassistant/venv with Python 3.13) discovers
# the agent, restarts, and must show every entity with a value (docs/home-assistant.md); its Assist
# uses the agent over Wyoming as speech-to-text and as a satellite.
homeassistant-test:
	scripts/homeassistant-venv
	$(PYTEST) -q -s -m homeassistant tests/e2e/test_homeassistant_real.py tests/e2e/test_wyoming_homeassistant.py
