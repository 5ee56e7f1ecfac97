"""mtqpgw's tests (``python -m twisted.trial tests``).

Property tests run under one hypothesis profile: no per-example deadline and
no "too slow" health check, because CI shares a 2-core machine and a slow
moment there is not a failure of the code.  Each test's own ``@settings``
inherit these.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mtqpgw",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile("mtqpgw")
