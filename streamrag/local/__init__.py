"""Dev tooling: the local stack of real services, the local Flink cluster, version pins.

Not part of the runtime: the core (streamrag/*.py, streamrag/stores), the jobs and the
connectors never import it; the CLI does.
"""
