"""Salon sessions and their talks: the record format, its import and its queries."""
