"""Prompt rows: Archer/verl JSON, JSONL and parquet rows, the generated toy arithmetic set, hub and
local data sets converted to those rows with a manifest; the `data` stage.

Imports: params, util.
"""
