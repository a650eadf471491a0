"""The ``gliomaseg`` command: the composition root that assembles every package's subcommands."""
