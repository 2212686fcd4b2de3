"""Hardening tests (issue 11): the helpers in _forge.py are imported from this directory."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
