"""What is written for people to read: the delivery report of a run, its evaluation section,
progress.md, `grpolab compare`; the `report` stage.

Imports: records, metrics, train (the memory estimate), params, util; never eval or pipeline.
"""
