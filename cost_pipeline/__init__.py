"""cost_pipeline: transcripts in, cleaned turns, function calls and exact LLM costs out."""

import warnings as _warnings

# Asset pages link their code through Dagster's code references, a beta we use knowingly: only its notices are silenced.
_warnings.filterwarnings(
    "ignore",
    message=r"(Class|Function) `(CodeReferencesMetadataValue|LocalFileCodeReference|"
    r"with_source_code_references)` is currently in beta",
)
