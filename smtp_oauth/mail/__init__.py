"""Messages: composing them, reading sendmail input, envelopes and header fields."""
