"""Reproduce the recipe's lessons at small scale (issue 22): experiments/reproduce.py."""
