"""Who may call and how often: API keys, bearer JWTs, the built-in OAuth2 issuer, scopes per route, rate limits."""
