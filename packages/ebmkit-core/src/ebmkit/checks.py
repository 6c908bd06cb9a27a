"""Checks of what a user hands the library (an energy, data), each failing in one line."""

from __future__ import annotations
