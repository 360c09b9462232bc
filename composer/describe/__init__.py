"""Describing a model or the language: the summary table, the JSON Schema, ``list``, ``to_recipe``
and the signal-propagation probe."""
