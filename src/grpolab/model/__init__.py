"""Models: a hub snapshot or local folder fetched with its manifest, the built-in tiny Qwen3 model,
tokenizer loading; the `download` stage.

Imports: data (the toy questions of the tiny model's warm-up), params, util.
"""
