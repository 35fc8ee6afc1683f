"""The tasks of `detector benchmark --task TASK`, one module each, and the timing they share (`timing`)."""
