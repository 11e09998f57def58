"""herd shared code: settings, internal types, errors, Redis names, CLI."""
