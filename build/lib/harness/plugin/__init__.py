"""The pytest plugin: options, the case matrix, one fixture per stage, and the sign-off report."""
