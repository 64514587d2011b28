"""orderctl: one command line for operating the order backbone."""
