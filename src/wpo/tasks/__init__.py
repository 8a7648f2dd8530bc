"""Tasks with programmatic rewards, shipped with their prompts: the quickstart's `ifeval`."""
