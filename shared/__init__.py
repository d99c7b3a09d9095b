"""The clinic's messaging and persistence core, shared by every service."""
