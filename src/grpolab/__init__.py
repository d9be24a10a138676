"""grpolab: reproducible GRPO math-RL experiments on small LLMs."""
__version__ = "0.1.0"
