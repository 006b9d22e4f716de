"""Speed benchmarks: scripts that print figures, each against a baseline measured in the same run.

    python -m bench.speed.data_path
"""
