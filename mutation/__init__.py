"""Mutation testing: the per-module report over mutmut's results (``make mutation``)."""
