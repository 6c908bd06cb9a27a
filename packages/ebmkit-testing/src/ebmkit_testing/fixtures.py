"""pytest plugin: fixtures for ebmkit tests."""
