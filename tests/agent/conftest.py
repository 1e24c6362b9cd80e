"""The agent's tests run a real fleet (broker, SeaweedFS, fleet service) and the simulator."""

from tests.fleet.conftest import fleet, fleet_config, s3
from tests.site.conftest import simulator

__all__ = ["fleet", "fleet_config", "s3", "simulator"]
