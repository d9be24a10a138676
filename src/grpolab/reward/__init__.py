"""Scoring a response: answer extraction (`\boxed{}`), the math-verify reward in time-bounded worker
processes with the overlong penalty, user reward functions (`reward.function`), `grpolab score`.

Imports: params, util.
"""
