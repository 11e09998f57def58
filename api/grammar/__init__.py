"""Grammars compiled in the API, so a bad or abusive schema is a 400 that never reaches a worker: JSON Schema to GBNF
(schema.py), regular expressions to automata for `pattern` (regex.py, pattern.py), tool arguments (tools.py)."""
