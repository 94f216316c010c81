"""The subcommands of ``oarl`` (``oarl.cli`` dispatches): one module each, with ``HELP``, ``add_args(parser)`` and
``run(args) -> int`` (``train`` and ``compare``: ``run(argv)``, their flags are TRL's parser's)."""
