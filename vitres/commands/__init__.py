"""Command modules for the ``vitres`` CLI: each defines ``register(subparsers)`` and ``run(args)``."""
