"""Call ids: one per turn and stage, the same in every run, so a re-run replaces the same calls."""

import uuid

CALL_ID_NAMESPACE = uuid.UUID("0c7d3e3a-58c4-4d0e-9a6e-4a1f6c2b9e55")


def call_id(turn_id: str, stage: str) -> str:
    """Stable per turn and stage, so a re-run replaces the same calls."""
    return str(uuid.uuid5(CALL_ID_NAMESPACE, f"{turn_id}\x1f{stage}"))
