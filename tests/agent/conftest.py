"""The agent's tests run a real fleet (broker, SeaweedFS, fleet service) and the simulator."""

from tests.fleet.conftest import bucket, fleet, fleet_config, s3, shared_s3
from tests.site.conftest import simulator

__all__ = ["bucket", "fleet", "fleet_config", "s3", "shared_s3", "simulator"]
