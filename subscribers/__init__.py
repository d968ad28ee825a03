"""The people invitations go to: storage, validation, import, unsubscribe and suppression."""
