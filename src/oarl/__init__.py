"""oarl: Outcome-grounded Advantage Reshaping (OAR) for GRPO on language models.

``oarl.credit`` is the framework-free core (torch only); ``OARConfig`` / ``OARTrainer`` are the TRL trainer.
"""

__version__ = "0.1.0"
__all__ = ["OARConfig", "OARTrainer", "__version__"]


def __getattr__(name):
    if name in ("OARConfig", "OARTrainer"):
        from . import trainer  # lazy: `import oarl` (and the command) load TRL only when the trainer is asked for

        return getattr(trainer, name)
    raise AttributeError(f"module 'oarl' has no attribute {name!r}")
