"""Operating the device: memory and alerts, telemetry, systemd, Home Assistant, doctor, logging."""
