"""cost_pipeline: transcripts in, cleaned turns, function calls and exact LLM costs out."""
