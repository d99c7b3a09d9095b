"""`make bench`: the project's performance figures, each beside a baseline measured in the same
run on the same machine, so the ratio means something even on a busy or slow box."""
