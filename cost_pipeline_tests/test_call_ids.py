"""Call ids are uuid5's ids: a re-run of any day written before (or after) replaces the same calls."""

import random
import string
import uuid

from cost_pipeline.gemini.call_ids import CALL_ID_NAMESPACE, call_id


def test_call_ids_are_the_uuid5_ids_for_any_turn_and_stage():
    rng = random.Random(7)
    alphabet = string.printable + "éßØ漢字🙂\x1f"
    for _ in range(20_000):
        turn_id = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        stage = rng.choice(["clean", "function", "", "x" * rng.randrange(1, 9)])
        assert call_id(turn_id, stage) == str(uuid.uuid5(CALL_ID_NAMESPACE, f"{turn_id}\x1f{stage}"))


def test_a_call_id_is_the_one_earlier_runs_wrote():
    # Written by the uuid5 implementation before this one: rows already in a warehouse carry it.
    assert call_id("eval-001-conv-0001-turn-0003", "clean") == "e3effe2a-b4e4-5ad0-ab90-f4920333ebff"
