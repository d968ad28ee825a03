"""Mail coming back: bounces, complaints, mailto unsubscribes and auto-replies."""
