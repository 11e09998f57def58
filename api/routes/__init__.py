"""Thin controllers: decode, translate, call the gateway, respond."""
