"""`mwm`: one command whose sub-commands are the pipeline's phases (see `mwm.cli`)."""
