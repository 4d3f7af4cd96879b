"""Test helpers shared by several test modules (real-model fixtures, protocol stand-ins)."""
