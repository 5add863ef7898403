"""Kopf handlers, one module per kind: they gather state and apply decisions; the decisions
themselves live in nofx.decisions."""
