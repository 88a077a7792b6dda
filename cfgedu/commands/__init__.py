"""`python -m cfgedu COMMAND`: one module per command (HELP, add_arguments, run), dispatched by cli.py."""
