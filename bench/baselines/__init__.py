"""The servers and in-process programs the benchmark compares zapbilling with. Each runs as its
own process (`python -m bench.baselines.<name> ...`) so it is measured like the real server."""
