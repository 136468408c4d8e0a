"""Downstream tasks on an exported backbone."""
