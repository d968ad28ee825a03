"""Answers to invitations: yes / maybe / no, capacity, waitlist, deadline."""
