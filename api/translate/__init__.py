"""The only place wire types become internal types, and internal results become wire types."""
