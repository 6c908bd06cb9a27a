"""Plugin scaffold: `ebmkit plugin new` (see issue 7)."""
