"""Storage behind small protocols, one embedded and one distributed implementation each."""
