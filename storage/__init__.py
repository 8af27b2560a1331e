"""Persistence: SQLAlchemy models, the Store (engine + migrations) and the repository functions.

Knows nothing of generators or Gradio; stores plain text, JSON and files.
"""

from .db import Store

__all__ = ["Store"]
