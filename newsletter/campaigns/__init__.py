"""Campaigns and their deliveries: one row per recipient, claimed in batches by workers."""
