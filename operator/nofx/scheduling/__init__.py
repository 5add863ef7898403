"""Schedules: which Runs to start, cancel and delete, as plain functions over plain data."""
