"""The clinic's services: booking, forms and notify."""
