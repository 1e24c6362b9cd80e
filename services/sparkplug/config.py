"""Configuration of the `sparkplug` source: which Sparkplug B edge nodes to read, and where."""

from __future__ import annotations

from pydantic import Field

from shared.config import BrokerConfig, ServiceConfig, TopicId


class SparkplugSourceConfig(ServiceConfig):
    """Reads Sparkplug B edge nodes of one group; signals are named `{node}/{metric}` and
    `{node}/{device}/{metric}` (a flow reads `{source}/{node}/{device}/{metric}`)."""

    source: TopicId  # readings are published on ef/{site}/raw/{source}
    group_id: TopicId
    edge_nodes: list[TopicId] | None = None  # default: every edge node of the group
    server: BrokerConfig | None = None  # where the edge nodes publish; default: the site broker
    client_id: str | None = None  # on `server`; default: {site}-{instance}-spb
    rebirth_on_gap: bool = True  # a seq gap or an unknown alias asks the node for a rebirth
    rebirth_interval_s: float = Field(5.0, gt=0)  # at most one rebirth request per node this often
    publish_qos: int = Field(1, ge=0, le=1)
    coalesce_ms: float = Field(
        5.0, ge=0, le=10_000
    )  # readings gathered into one batch per tick; 0: one per message
