"""The lab's benchmark (scripts/bench-lab.py): statistics, charts and the report page.

The pure parts live here (typed and unit-tested); booting guests and running
the other bench scripts is the script's and :mod:`pyctl.bench.dataplane`'s.
"""
