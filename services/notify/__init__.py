"""The notifier: turns the clinic's events into messages a patient can rely on.

Importing this package does nothing: the rules live in `model`, the texts in `texts`, and the
app and worker are built on demand so a test can import the rules without Flask or a broker.
"""
