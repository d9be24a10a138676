"""The user's commands: the `grpolab` CLI and `grpolab demo`.

Imports: any room (nothing imports pipeline).
"""
