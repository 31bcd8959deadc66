"""The landing folder as a Dagster resource, so its location and limits are run config."""

import dagster as dg
from pydantic import Field

from cost_pipeline.landing import DEFAULT_MAX_TEXT_CHARS, LandingDay, LandingFolderMissing, landing_folder, read_landing_day


class LandingResource(dg.ConfigurableResource):
    """Where transcripts land (`<root>/<YYYY-MM-DD>/*.jsonl`) and how strictly they are read."""

    root: str = Field(description="Folder holding one sub-folder per day.")
    max_text_chars: int = Field(
        default=DEFAULT_MAX_TEXT_CHARS, description="Turns with longer text are quarantined."
    )

    def read_day(self, day: str) -> LandingDay:
        folder = landing_folder(self.root, day)
        try:
            return read_landing_day(folder, self.max_text_chars)
        except LandingFolderMissing:
            raise LandingFolderMissing(
                f"No landing folder for partition {day}: expected {folder.resolve()} "
                "(set COST_PIPELINE_LANDING or the landing resource's root to change where transcripts land)"
            ) from None
