"""Side-by-side benchmarks of device-agent and Microsoft's SDK against devcloud.

Run ``python bench/run.py --help``; see ``bench/README.md``.
"""
