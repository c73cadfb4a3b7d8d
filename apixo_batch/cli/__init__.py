"""The command line: parses argv and the environment, prints, shows progress; thin over
:mod:`apixo_batch.api`."""
