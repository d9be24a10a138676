"""Imported first by every stage script: put this tree's `src/` first on the import path, and on
PYTHONPATH for the ranks torchrun/Ray start, so a stage runs the code of the tree DVC runs it in
(the code dvc.yaml hashes; a queued experiment's own commit), never a grpolab installed elsewhere.
"""
import os
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
