"""Data: question-answer sets for training and evaluation."""

from __future__ import annotations

from searchr1.data.qa import QAExample, load_qa

__all__ = ["QAExample", "load_qa"]
