"""oarl: Outcome-grounded Advantage Reshaping for GRPO on language models."""

__version__ = "0.1.0"
