"""The Gemini stages a call belongs to, as stored in every table that has a `stage` column.

A module of its own, free of the SDK: the step's writer process files cache entries by
stage, and importing them from `prompts.py` (which declares the tools with google-genai's
types) made every writer process spend 0.59 s of CPU importing google-genai at its start.
"""

CLEAN, FUNCTION = "clean", "function"
