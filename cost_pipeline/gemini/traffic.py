"""Vertex AI's traffic types (`usageMetadata.trafficType`): the tier an answer was served at, named once.

Flex and priority are asked for with a service tier (`flex`, `priority`) and served as
`ON_DEMAND_FLEX` and `ON_DEMAND_PRIORITY`; `ON_DEMAND`, an unspecified type and an answer that
names none are the standard tier; provisioned throughput is prepaid capacity.
"""

ON_DEMAND, FLEX, PRIORITY = "ON_DEMAND", "ON_DEMAND_FLEX", "ON_DEMAND_PRIORITY"
PROVISIONED_THROUGHPUT = "PROVISIONED_THROUGHPUT"
STANDARD_TRAFFIC_TYPES = frozenset({ON_DEMAND, "TRAFFIC_TYPE_UNSPECIFIED"})
"""Traffic types billed at the standard on-demand rate (as is an answer that names none)."""
SERVED_AS = {"flex": FLEX, "priority": PRIORITY}
"""The traffic type a requested service tier is served as."""
