"""The `movrec` commands, one module per command group; movrec_cli.main assembles them.

Each module lists its top-level commands and groups in ``COMMANDS``.
"""
