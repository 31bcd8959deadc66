"""Call ids: one per turn and stage, the same in every run, so a re-run replaces the same calls.

An id is the RFC 4122 version-5 UUID of "<turn_id>\\x1f<stage>" in `CALL_ID_NAMESPACE`, as
`str(uuid.uuid5(CALL_ID_NAMESPACE, ...))` spells it. It is built here from hashlib directly
because the event loop makes one per call: `uuid.uuid5` builds a UUID object (an int, its
checks) only to print it. The ids are the ones uuid5 gives (a test compares them); changing
them would make a re-run's calls new calls.
"""

import hashlib
import uuid

CALL_ID_NAMESPACE = uuid.UUID("0c7d3e3a-58c4-4d0e-9a6e-4a1f6c2b9e55")
_NAMESPACE_BYTES = CALL_ID_NAMESPACE.bytes


def call_id(turn_id: str, stage: str) -> str:
    """Stable per turn and stage, so a re-run replaces the same calls: uuid5's string, without its objects."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{turn_id}\x1f{stage}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    hexed = digest.hex()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
