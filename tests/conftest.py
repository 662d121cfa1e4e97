"""Settings for the whole suite.

Property tests run without hypothesis' per-example deadline (200 ms by default): on this
2-core machine, with Kafka, Postgres and the simulators beside the suite (and `-n 2`), one
example now and then takes longer for reasons that are not the code's, and a test must never
fail on timing luck. Speed is measured in the benchmarks (`make bench`), not here.
"""
from hypothesis import settings

settings.register_profile("blogstream", deadline=None)
settings.load_profile("blogstream")
